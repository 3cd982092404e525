"""Action (clip) classification: one learned readout query, one logit per class.

Baseline: the train set's class frequencies as the score of every class, i.e. the
majority class for top-1 and the five most frequent classes for top-5.
Shapes: M clips, K classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from data4d.world import SyntheticWorld
from evals.metrics import classification_metrics
from evals.readout import token_centres
from evals.task import Clips, Task


class Action(Task):
    name = "action"
    joint = True
    samples = 1

    def __init__(self, cfg, train: Clips, num_classes: int | None = None):
        super().__init__(cfg, train)
        if num_classes is None:
            num_classes = len(SyntheticWorld.CLASSES)
        self.out_dim = num_classes
        self.num_queries = cfg.num_tokens  # one query per token, at the token, read out jointly
        self.freq = np.bincount(train["label"], minlength=num_classes) / len(train["label"])  # (K,)

    def inputs(self, clips):
        label = torch.from_numpy(clips["label"]).long()
        return {"label": label, "where": token_centres(self.cfg.grid).expand(len(label), -1, -1, -1)}

    def loss(self, out, batch):
        return F.cross_entropy(out[:, 0], batch["label"])

    def metrics(self, out, clips):
        return classification_metrics(out[:, 0].numpy(), clips["label"])

    def baseline(self, clips):
        # Ties in frequency are broken by a tiny index-ordered offset so the ranking is deterministic.
        scores = self.freq - 1e-9 * np.arange(len(self.freq))
        return classification_metrics(
            np.broadcast_to(scores, (len(clips["label"]), len(scores))), clips["label"]
        )
