"""Box tracking: given an object's box in the first frame, predict its box in every later frame.

One readout query per object, computed from Fourier features of the normalised
first-frame box; per frame it outputs an offset of the four box edges from the
first-frame box (an untrained head starts at the "box never moves" baseline).
Scored on (object, later frame) pairs where the object is present; objects not
visible in frame 0 have no query box and are left out.
Shapes: M clips, O objects, T frames, S frame size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evals.metrics import box_metrics
from evals.readout import fourier_features
from evals.task import Clips, Task, masked_mean


class BoxTracking(Task):
    name = "box_tracking"

    def __init__(self, cfg, train: Clips):
        super().__init__(cfg, train)
        self.T, self.S = cfg.frames, cfg.size
        self.num_queries = train["boxes"].shape[1]
        self.cond_dim = 4 * 17  # fourier_features of x0, y0, x1, y1 with 8 bands
        self.out_dim = 4 * self.T
        self.patch = cfg.tubelet[1]

    def scored(self, clips: Clips) -> np.ndarray:
        """(M, O, T) bool: later frames where an object seen in frame 0 is present."""
        vis = clips["box_visible"]
        keep = vis & vis[:, :, :1]
        keep[:, :, 0] = False
        return keep

    def inputs(self, clips):
        boxes = torch.from_numpy(clips["boxes"]).float()  # (M, O, T, 4)
        first = boxes[:, :, 0]  # (M, O, 4)
        return {
            "cond": fourier_features(first / self.S),
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

    def metrics(self, out, clips):
        first = torch.from_numpy(clips["boxes"][:, :, 0]).float()
        return box_metrics(self.decode(out, first).numpy(), clips["boxes"], self.scored(clips))

    def baseline(self, clips):
        """The box never moves."""
        pred = np.broadcast_to(clips["boxes"][:, :, :1], clips["boxes"].shape)
        return box_metrics(pred, clips["boxes"], self.scored(clips))
