"""Point tracking (TAP-Vid style): given a query point (t, y, x), predict its (x, y) and
occlusion in every frame.

One readout query per point, computed from Fourier features of the normalised query
point; per frame it outputs a position offset from the query point (so an untrained
head starts at the "never moves" baseline) and an occlusion logit. (A query per
(point, frame) is the obvious richer variant; it costs 8x more on micro clips and did
no better there.)
Shapes: M clips, P points, T frames, S frame size.
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
    headline = "aj"

    def __init__(self, cfg, train: Clips):
        super().__init__(cfg, train)
        self.T, self.S = cfg.frames, cfg.size
        self.cond_dim = 3 * 17  # fourier_features of (t, y, x) with 8 bands
        self.out_dim = 4 * self.T  # per frame: dx, dy, occlusion logit, "off by more than FAR" logit
        self.num_queries = train["tracks"].shape[1]
        self.patch = cfg.tubelet[1]  # the head outputs offsets in patch units
        self.samples = cfg.grid[0]  # features at the query's (y, x) at every token time step: its local motion

    def query_points(self, clips: Clips) -> np.ndarray:
        """(M, P, 3) as (t, y, x) in pixels: the track's position at its query frame."""
        tracks, qf = clips["tracks"], clips["query_frame"]  # (M, P, T, 2), (M, P)
        xy = np.take_along_axis(tracks, qf[..., None, None].repeat(2, -1), axis=2)[:, :, 0]  # (M, P, 2)
        return np.concatenate([qf[..., None], xy[..., ::-1]], -1).astype(np.float32)

    def inputs(self, clips: Clips) -> dict[str, torch.Tensor]:
        q = torch.from_numpy(self.query_points(clips))  # (M, P, 3)
        unit = q / torch.tensor([max(self.T - 1, 1), self.S, self.S])  # to [0, 1]
        return {
            "cond": fourier_features(unit),  # (M, P, 51)
            "where": at_every_time(q[..., [2, 1]] / self.S * 2 - 1, self.samples),  # (M, P, t, 3)
            "query_xy": q[..., [2, 1]],  # (M, P, 2)
            "tracks": torch.from_numpy(clips["tracks"]).float(),  # (M, P, T, 2)
            "occluded": torch.from_numpy(clips["occluded"]),  # (M, P, T)
        }

    def decode(self, out: torch.Tensor, query_xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """out (B, P, 4T) -> tracks (B, P, T, 2) in pixels, occlusion and "far" logits (B, P, T)."""
        out = out.view(*out.shape[:2], self.T, 4)
        return query_xy[:, :, None] + out[..., :2] * self.patch, out[..., 2], out[..., 3]

    def loss(self, out, batch):
        xy, occ, far = self.decode(out, batch["query_xy"])
        visible = ~batch["occluded"]
        err = (xy - batch["tracks"]).abs().sum(-1)  # (B, P, T) L1 in pixels: rewards sub-pixel precision
        # TAPIR's uncertainty head: is this prediction further than FAR from the truth (a visible point only)?
        is_far = (err.detach() > FAR * self.S / TAPVID_SIZE).float()
        bce = F.binary_cross_entropy_with_logits
        return (masked_mean(err, visible) + bce(occ, batch["occluded"].float())
                + masked_mean(bce(far, is_far, reduction="none"), visible))

    def metrics(self, out, clips):
        xy, occ, far = self.decode(out, self.inputs(clips)["query_xy"])
        # As TAPIR: a point is reported visible when it is likely both visible and near its prediction.
        return self._score(clips, xy.numpy(), (torch.sigmoid(-occ) * torch.sigmoid(-far) < 0.5).numpy())

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
