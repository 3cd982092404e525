"""Camera pose: regress the camera motion from the first frame to every later frame.

One learned readout query per frame outputs the 6-D relative-pose vector
(`evals.metrics.pose_vector`: axis-angle ⊕ translation of camera_0 -> camera_t),
standardised with train-set statistics. Headline `epe` and the angular errors are
on the first->last pose (the 4DS end-point error); `*_all` average over every later frame.
Shapes: M clips, T frames.
"""

from __future__ import annotations

import numpy as np
import torch

from evals.metrics import pose_matrix, pose_metrics, pose_vector, relative_pose
from evals.readout import token_centres
from evals.task import Clips, Task


class CameraPose(Task):
    name = "camera_pose"
    joint = True
    samples = 1

    def __init__(self, cfg, train: Clips):
        super().__init__(cfg, train)
        self.num_queries = cfg.num_tokens  # one query per token, at the token, read out jointly
        self.out_dim = 6 * cfg.frames
        v = pose_vector(relative_pose(train["extrinsics"]))[:, 1:]  # (M, T-1, 6)
        self.mean = torch.tensor(v.mean((0, 1)), dtype=torch.float32)
        self.std = torch.tensor(
            v.std((0, 1)) + 1e-6, dtype=torch.float32
        )  # translation units are the world's

    def inputs(self, clips):
        v = torch.tensor(pose_vector(relative_pose(clips["extrinsics"])), dtype=torch.float32)  # (M, T, 6)
        return {
            "target": (v - self.mean) / self.std,
            "where": token_centres(self.cfg.grid).expand(len(v), -1, -1, -1),
        }

    def loss(self, out, batch):
        # The end-point error itself (Euclidean, in pose-vector units) over the later frames: frame 0 is the
        # identity by definition, and an MSE on standardised targets would spend the readout on tiny rotations.
        err = (out.view(len(out), -1, 6) - batch["target"])[:, 1:] * self.std
        return err.pow(2).sum(-1).add(1e-8).sqrt().mean()

    def metrics(self, out, clips):
        pred = pose_matrix(
            (out.view(len(out), -1, 6) * self.std + self.mean).double().numpy()
        )  # (M, T, 4, 4)
        return self._score(clips, pred)

    def baseline(self, clips):
        """The camera never moves: identity relative poses."""
        return self._score(clips, np.broadcast_to(np.eye(4), clips["extrinsics"].shape))

    def _score(self, clips, pred):
        gt = relative_pose(clips["extrinsics"])  # (M, T, 4, 4)
        last = pose_metrics(pred[:, -1], gt[:, -1])
        every = pose_metrics(pred[:, 1:].reshape(-1, 4, 4), gt[:, 1:].reshape(-1, 4, 4))
        return last | {f"{k}_all": v for k, v in every.items()}
