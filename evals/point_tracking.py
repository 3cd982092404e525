"""Point tracking (TAP-Vid style): given a query point (t, y, x), predict its (x, y) and
occlusion in every frame.

One readout query per (point, token time step): it is computed from Fourier features of
the normalised query point and of that time step, plus the features at the query point
(at its own time) and at the same place at that time step, so the head compares the
two. It outputs, for each frame of its time step, a position offset from the query
point (an untrained head starts at the "never moves" baseline), an occlusion logit and
TAPIR's "further than FAR from the truth" logit. (One query per point, reading all
frames at once, learned nothing beyond the baseline on micro clips.)
A point is reported visible when p(visible) * p(near) clears a threshold picked on val.
Shapes: M clips, P points, T frames, t token time steps, S frame size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evals.metrics import TAPVID_SIZE, tapvid_metrics
from evals.readout import at_every_time, fourier_features
from evals.task import Clips, Task, masked_mean

FAR = 16.0  # px of a 256x256 frame (TAPIR uses 6 at 256 px; 2 px here)


class PointTracking(Task):
    name = "point_tracking"
    samples = 2  # features at the query point, and at the same place at the query's time step

    def __init__(self, cfg, train: Clips):
        super().__init__(cfg, train)
        self.T, self.S, self.t = cfg.frames, cfg.size, cfg.grid[0]
        self.points = train["tracks"].shape[1]
        self.num_queries = self.points * self.t
        self.cond_dim = 4 * 17  # fourier_features of (t, y, x) and of the query's time step, 8 bands each
        self.out_dim = 4 * (
            self.T // self.t
        )  # per frame: dx, dy, occlusion logit, "off by more than FAR" logit
        self.patch = cfg.tubelet[1]  # the head outputs offsets in patch units
        self.threshold = 0.5  # on p(visible) * p(near); `tune` picks it on val

    def query_points(self, clips: Clips) -> np.ndarray:
        """(M, P, 3) as (t, y, x) in pixels: the track's position at its query frame."""
        tracks, qf = clips["tracks"], clips["query_frame"]  # (M, P, T, 2), (M, P)
        xy = np.take_along_axis(tracks, qf[..., None, None].repeat(2, -1), axis=2)[:, :, 0]  # (M, P, 2)
        return np.concatenate([qf[..., None], xy[..., ::-1]], -1).astype(np.float32)

    def query_xy(self, clips: Clips) -> torch.Tensor:
        """(M, P, 2) the query points as (x, y) pixels: where decoded offsets start from."""
        return torch.from_numpy(self.query_points(clips)[..., [2, 1]])

    def inputs(self, clips: Clips) -> dict[str, torch.Tensor]:
        q = torch.from_numpy(self.query_points(clips))  # (M, P, 3)
        M, P, t = *q.shape[:2], self.t
        steps = (torch.arange(t) + 0.5) / t  # token time steps in [0, 1]
        unit = q / torch.tensor([max(self.T - 1, 1), self.S, self.S])  # to [0, 1]
        point = fourier_features(unit)[:, :, None].expand(M, P, t, -1)
        step = fourier_features(steps[:, None]).expand(M, P, t, -1)
        xy = q[..., [2, 1]] / self.S * 2 - 1  # (M, P, 2) in [-1, 1]
        own_step = (q[..., :1] * t / self.T).floor()  # the token time step of the query frame
        here = torch.cat([xy, (own_step + 0.5) / t * 2 - 1], -1)[:, :, None].expand(
            M, P, t, 3
        )  # (M, P, t, 3)
        return {
            "cond": torch.cat([point, step], -1).flatten(1, 2),  # (M, P * t, 68)
            "where": torch.stack([here, at_every_time(xy, t)], 3).flatten(1, 2),  # (M, P * t, 2, 3)
            "query_xy": self.query_xy(clips),  # (M, P, 2)
            "tracks": torch.from_numpy(clips["tracks"]).float(),  # (M, P, T, 2)
            "occluded": torch.from_numpy(clips["occluded"]),  # (M, P, T)
        }

    def decode(
        self, out: torch.Tensor, query_xy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """out (B, P * t, 4T / t) -> tracks (B, P, T, 2) in pixels, occlusion and "far" logits (B, P, T)."""
        out = out.view(
            out.shape[0], self.points, self.T, 4
        )  # queries are (point, step), each step's frames in order
        return query_xy[:, :, None] + out[..., :2] * self.patch, out[..., 2], out[..., 3]

    def loss(self, out, batch):
        xy, occ, far = self.decode(out, batch["query_xy"])
        visible = ~batch["occluded"]
        err = (xy - batch["tracks"]).abs().sum(-1)  # (B, P, T) L1 in pixels: rewards sub-pixel precision
        # TAPIR's uncertainty head: is this prediction further than FAR from the truth (a visible point only)?
        is_far = (err.detach() > FAR * self.S / TAPVID_SIZE).float()
        bce = F.binary_cross_entropy_with_logits
        return (
            masked_mean(err, visible)
            + bce(occ, batch["occluded"].float())
            + masked_mean(bce(far, is_far, reduction="none"), visible)
        )

    def metrics(self, out, clips):
        xy, occ, far = self.decode(out, self.query_xy(clips))
        return self._score(clips, xy.numpy(), (self.p_visible(occ, far) < self.threshold).numpy())

    @staticmethod
    def p_visible(occ: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
        """As TAPIR: a point is reported visible when it is likely both visible and near its prediction."""
        return torch.sigmoid(-occ) * torch.sigmoid(-far)

    def tune(self, out, clips):
        """Pick the visibility threshold with the best AJ on these (val) outputs."""
        xy, occ, far = self.decode(out, self.query_xy(clips))
        p = self.p_visible(occ, far)
        scores = {
            th: self._score(clips, xy.numpy(), (p < th).numpy())["aj"] for th in np.linspace(0.0, 0.95, 20)
        }
        self.threshold = float(max(scores, key=scores.get))

    def baseline(self, clips):
        """The point never moves and is always visible."""
        xy = self.query_points(clips)[..., [2, 1]]  # (M, P, 2)
        pred = np.broadcast_to(xy[:, :, None], clips["tracks"].shape)
        return self._score(clips, pred, np.zeros_like(clips["occluded"]))

    def _score(self, clips, pred_xy, pred_occ):
        args = (self.query_points(clips), clips["occluded"], clips["tracks"], pred_occ, pred_xy)
        first = tapvid_metrics(*args, query_mode="first", size=self.S)
        strided = tapvid_metrics(*args, query_mode="strided", size=self.S)
        return first | {f"{k}_strided": strided[k] for k in ("aj", "delta_avg", "oa")}
