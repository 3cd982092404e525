"""Box tracking: given an object's box in the first frame, predict its box in every later frame.

One readout query per object, computed from Fourier features of the normalised
first-frame box plus the features at five points of that box (its centre and the
points half way to its corners) at every token time step, so the head sees what
stays at the box's place and what moves away (a query from the box's coordinates
alone barely moved off the baseline), each projected to 16 numbers before they are
combined; per frame it outputs an offset of the four box edges from the first-frame
box (an untrained head starts at the "box never moves" baseline).
Scored on (object, later frame) pairs where the object is present; objects not
visible in frame 0 have no query box and are left out.
Shapes: M clips, O objects, T frames, S frame size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evals.metrics import box_metrics
from evals.readout import at_every_time, fourier_features
from evals.task import Clips, Task, masked_mean

# Where the readout samples features in a box, as fractions of its size from the centre.
BOX_POINTS = torch.tensor([[0.0, 0.0], [-0.25, -0.25], [0.25, -0.25], [-0.25, 0.25], [0.25, 0.25]])


class BoxTracking(Task):
    name = "box_tracking"

    def __init__(self, cfg, train: Clips):
        super().__init__(cfg, train)
        self.T, self.S = cfg.frames, cfg.size
        self.num_queries = train["boxes"].shape[1]
        self.cond_dim = 4 * 17  # fourier_features of x0, y0, x1, y1 with 8 bands
        self.out_dim = 4 * self.T
        self.patch = cfg.tubelet[1]
        self.t = cfg.grid[0]
        self.samples = len(BOX_POINTS) * self.t
        self.sample_width = 16  # 20 points: projected each, else wide encoders' features overfit

    def scored(self, clips: Clips) -> np.ndarray:
        """(M, O, T) bool: later frames where an object seen in frame 0 is present."""
        vis = clips["box_visible"]
        keep = vis & vis[:, :, :1]
        keep[:, :, 0] = False
        return keep

    def inputs(self, clips):
        boxes = torch.from_numpy(clips["boxes"]).float()  # (M, O, T, 4)
        first = boxes[:, :, 0]  # (M, O, 4)
        centre, size = (first[..., :2] + first[..., 2:]) / 2, first[..., 2:] - first[..., :2]  # (M, O, 2)
        points = centre[:, :, None] + BOX_POINTS * size[:, :, None]  # (M, O, 5, 2) as (x, y) pixels
        where = at_every_time(points / self.S * 2 - 1, self.t)  # (M, O, 5, t, 3)
        return {
            "cond": fourier_features(first / self.S),
            "where": where.flatten(2, 3),  # (M, O, 5t, 3)
            "first": first,
            "boxes": boxes,
            "scored": torch.from_numpy(self.scored(clips)),
        }

    def decode(self, out, first):
        """out (B, O, 4T) -> boxes (B, O, T, 4) in pixels."""
        return first[:, :, None] + out.view(*out.shape[:2], self.T, 4) * self.patch

    def loss(self, out, batch):
        pred = self.decode(out, batch["first"])
        err = F.huber_loss(pred / self.patch, batch["boxes"] / self.patch, reduction="none").sum(
            -1
        )  # (B, O, T)
        return masked_mean(err, batch["scored"])

    def metrics(self, out, clips, per_clip=False):
        first = torch.from_numpy(clips["boxes"][:, :, 0]).float()
        return box_metrics(self.decode(out, first).numpy(), clips["boxes"], self.scored(clips), per_clip)

    def baseline(self, clips, per_clip=False):
        """The box never moves."""
        pred = np.broadcast_to(clips["boxes"][:, :, :1], clips["boxes"].shape)
        return box_metrics(pred, clips["boxes"], self.scored(clips), per_clip)
