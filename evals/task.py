"""What every eval task defines; `evals.run` trains and scores any of them the same way.

A task is built from the encoder config and the train split (where it takes its
statistics: target scales, mean depth, class frequencies). It says how many queries
the readout has, what conditions them and how wide its output is; it turns clips
into readout inputs and targets, scores readout outputs with `evals.metrics`, and
scores the trivial baseline on the same clips.

`Clips` is one split stacked from SyntheticWorld items: `video` (M, T, S, S, 3) uint8
plus every ground-truth field with a leading clip axis M.
"""

from __future__ import annotations

import numpy as np
import torch

from contracts.shapes import MAEConfig
from contracts.tasks import TASKS

Clips = dict[str, np.ndarray]


class Task:
    name: str  # a key of the task catalog (contracts.tasks), which holds its headline metric
    num_queries: int = 1
    cond_dim: int = 0  # 0: learned queries
    samples: int = 0  # queries also get the features at `where`, K points each (see AttentionReadout)
    sample_width: int = 0  # > 0: each sampled feature projected to this width first (see AttentionReadout)
    joint: bool = False  # one output per clip from all queries together
    out_dim: int

    def __init__(self, cfg: MAEConfig, train: Clips):
        self.cfg = cfg

    @property
    def headline(self) -> str:
        """The metric that picks the best readout epoch on val."""
        return TASKS[self.name].headline

    def inputs(self, clips: Clips) -> dict[str, torch.Tensor]:
        """Per-clip tensors with leading dim M: `cond` (M, Q, C) when cond_dim > 0, `where` (M, Q, K, 3) when
        samples, plus what `loss` reads."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """out (B, Q, O) from the readout -> scalar loss."""
        raise NotImplementedError

    def metrics(self, out: torch.Tensor, clips: Clips, per_clip: bool = False) -> dict[str, float]:
        """Readout outputs for every clip of a split (M, Q, O) -> metrics against its ground truth
        (per_clip: as `evals.metrics.ClipSums`, what the bootstrap of the standard errors resamples)."""
        raise NotImplementedError

    def tune(self, out: torch.Tensor, clips: Clips) -> None:
        """Set any decision threshold from the chosen epoch's val outputs (M, Q, O); most tasks have none."""

    def baseline(self, clips: Clips, per_clip: bool = False) -> dict[str, float]:
        """The trivial baseline's metrics on `clips` (names without the `baseline_` prefix)."""
        raise NotImplementedError


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over mask (broadcast to x); 0 when the mask is empty, so a batch without targets adds
    no loss."""
    mask = mask.expand_as(x).to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)
