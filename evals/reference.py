"""Evaluate a reference model (contracts.references) exactly as a rung's checkpoint is evaluated.

    evaluate_reference(ref, "depth", readout=..., data=...)  -> the metrics `evals.run.evaluate` returns
                                                                 (with `_se`s and the `baseline_` ones)

The same clips (the sweep's frames, resolution and world, or the task's dataset on disk), the same
readout settings, seeds, bootstrap and feature cache as `evals.run`: only the features differ.
They come from `models.backbones` (a transformers model, pixels, a random or imported encoder) on
the sweep's clips, with the time axis resized to the sweep's token time steps (the ladder's own
grid, so every model's readout sees the same number of time steps) and the backbone's own spatial
grid. Frozen only: a reference is never trained, readout or not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from contracts.references import ReferenceConfig
from contracts.shapes import MAEConfig, ViTShape
from contracts.spec import Data, EvalData, Readout, World
from evals.cache import CACHE
from evals.run import SPLITS, TASKS, fit_and_score, load_clips, load_dataset_clips
from models.backbones import Backbone, build_backbone, readout_grid

_LOADED: dict[tuple, Backbone] = {}  # the last backbone this process loaded, for its next task


def clip_config(ref: ReferenceConfig) -> MAEConfig:
    """The sweep's clip geometry (frames, resolution, tubelet) the tasks are built on; the encoder
    shape in it is never used (the readout reads the backbone's width and grid)."""
    return MAEConfig(
        encoder=ViTShape(8, 1, 8, 1), frames=ref.frames, size=ref.resolution, tubelet=ref.tubelet
    )


def backbone_for(ref: ReferenceConfig, fraction: float, device: str) -> Backbone:
    key = (ref.key, ref.entry.trust_remote_code, fraction, device)
    if key not in _LOADED:
        _LOADED.clear()  # one at a time: a 1B model's weights are not kept for a task that won't need them
        _LOADED[key] = build_backbone(ref, fraction, device)
    return _LOADED[key]


def evaluate_reference(
    ref: ReferenceConfig,
    task: str,
    mode: str = "frozen",
    readout: Readout = Readout(),
    data: Data = Data(),
    device: str = "cpu",
    datasets: dict[str, EvalData] | None = None,
    info: dict | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict[str, float]:
    """Test metrics (and the trivial baseline's) of `ref`'s features on `task`. `info`, when given,
    gets {"dataset", "split", "reference": the backbone's params (models.backbones.Backbone.describe)}."""
    if task not in TASKS or mode != "frozen":
        raise ValueError(f"reference models are evaluated frozen on a catalog task, not {task}/{mode}")
    cfg = clip_config(ref)
    world = getattr(data, "world", World())
    sizes = dict(zip(SPLITS, (readout.train_clips, readout.val_clips, readout.test_clips), strict=True))
    if task in (datasets or {}):
        clips, about, clips_key = load_dataset_clips(cfg, datasets[task], task, sizes)
    else:
        clips = {s: load_clips(cfg, world, s, n) for s, n in sizes.items()}
        about = {"dataset": "synthetic", "split": "synthetic world splits"}
        clips_key = f"{cfg.frames}x{cfg.size}/{world.model_dump_json()}"
    backbone = backbone_for(ref, readout.depth_fraction, device)
    steps = cfg.grid[0]  # the common time length: the ladder's token time steps

    def split_features(split: str) -> np.ndarray:
        key = f"ref/{ref.key}/{readout.depth_fraction}/{clips_key}/{split}/{sizes[split]}"
        return CACHE.get(key, lambda: {"f": backbone.features(clips[split]["video"], steps).numpy()})["f"]

    store = {s: split_features(s) for s in SPLITS}

    def feats(split, idx, train):
        return torch.from_numpy(np.asarray(store[split][idx.numpy()])).to(device)

    extra = {"num_classes": about["num_classes"]} if task == "action" and "num_classes" in about else {}
    shape = (backbone.geometry.width, readout_grid(backbone, steps))
    metrics = fit_and_score(
        TASKS[task](cfg, clips["train"], **extra), feats, clips, readout, None, device, progress, shape
    )
    if info is not None:
        info |= {"dataset": about["dataset"], "split": about["split"], "reference": backbone.describe()}
    return metrics
