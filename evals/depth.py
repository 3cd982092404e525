"""Depth: predict metric depth for every pixel of every frame.

One learned readout query per token of the grid (an output patch of tubelet-sized
pixels), each outputting the log-depths of its t x ph x pw pixels as an offset from
the baseline (the train set's mean depth at that pixel), so an untrained head starts
at the baseline. L1 on log-depth over valid pixels (finite, > 0).
Shapes: M clips, T frames, S frame size, Q = patches, P = pixels per patch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from evals.metrics import depth_metrics
from evals.readout import token_centres
from evals.task import Clips, Task, masked_mean


def valid_depth(depth: np.ndarray) -> np.ndarray:
    return np.isfinite(depth) & (depth > 0)


class Depth(Task):
    name = "depth"
    samples = 1

    def __init__(self, cfg, train: Clips):
        super().__init__(cfg, train)
        self.num_queries = cfg.num_tokens
        self.out_dim = math.prod(cfg.tubelet)
        d = train["depth"]  # (M, T, S, S)
        ok = valid_depth(d)
        # Baseline: the train set's mean depth at each pixel (global mean where a pixel never had one).
        count = ok.sum(0)
        self.mean_depth = np.where(count > 0, np.where(ok, d, 0).sum(0) / np.maximum(count, 1), d[ok].mean())
        self.prior = self.patchify(
            torch.tensor(np.log(self.mean_depth), dtype=torch.float32)[None]
        )  # (1, Q, P)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(M, T, S, S) -> (M, Q, P) in the encoder's token order (t, h, w)."""
        t, h, w = self.cfg.tubelet
        M, T, H, W = x.shape
        x = x.reshape(M, T // t, t, H // h, h, W // w, w).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(M, -1, t * h * w)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(M, Q, P) -> (M, T, S, S)."""
        t, h, w = self.cfg.tubelet
        gt, gh, gw = self.cfg.grid
        x = x.reshape(x.shape[0], gt, gh, gw, t, h, w).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], gt * t, gh * h, gw * w)

    def inputs(self, clips):
        d = clips["depth"]
        ok = valid_depth(d)
        logd = np.log(np.where(ok, d, 1.0)).astype(np.float32)
        return {
            "target": self.patchify(torch.from_numpy(logd)) - self.prior,
            "valid": self.patchify(torch.from_numpy(ok)),
            "where": token_centres(self.cfg.grid).expand(len(d), -1, -1, -1),
        }

    def loss(self, out, batch):
        return masked_mean((out - batch["target"]).abs(), batch["valid"])

    def metrics(self, out, clips):
        pred = self.unpatchify(out + self.prior).double().exp().numpy()
        return depth_metrics(clips["depth"], pred, valid_depth(clips["depth"]))

    def baseline(self, clips):
        """The train set's mean depth per pixel, for every clip."""
        pred = np.broadcast_to(self.mean_depth, clips["depth"].shape)
        return depth_metrics(clips["depth"], pred, valid_depth(clips["depth"]))
