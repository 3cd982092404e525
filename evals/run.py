"""Train a readout on an exported encoder and score it: the one place evals are run.

    evaluate(export, "depth")                      -> {"abs_rel": …, …, "baseline_abs_rel": …, …}
    evaluate_many(export, ["depth", "action"])     -> {"depth": {…}, "action": {…}}

Eval data are SyntheticWorld clips (seed 0, splits train / val / test) at the
encoder's own frames and resolution (the rung dict's `model`), with the world knobs
of `data.world`. The readout trains with AdamW and a cosine schedule on train, the
epoch with the best val headline metric (task.headline) is kept, and test metrics
are reported beside the trivial baseline's (`baseline_<name>`).

Modes: "frozen" reads features from the block at readout.depth_fraction of a fixed
encoder; they are computed once per (checkpoint, split) and kept in `evals.cache.CACHE`,
so epochs and tasks in one process share them. "finetune" trains the encoder too,
at readout.lr * readout.finetune_lr_scale.

Cost: the readout settings decide it (a spec may change them per task, `evals.task_readout`).
With the local ladder's (width 64, 6 epochs, 512 / 64 / 128 clips; 20 epochs for point
tracking) one frozen eval of a micro encoder on 8x32x32 clips takes 5-15 s on a CPU core,
point tracking 25-50 s, most of it readout training.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch

from contracts.spec import Data, Readout, World
from contracts.tasks import MODES, higher_is_better
from contracts.tasks import TASKS as CATALOG
from data4d.world import SyntheticWorld
from evals.action import Action
from evals.box_tracking import BoxTracking
from evals.cache import CACHE, ArrayCache
from evals.camera_pose import CameraPose
from evals.depth import Depth
from evals.point_tracking import PointTracking
from evals.readout import AttentionReadout
from evals.task import Clips, Task
from models.export import WEIGHTS, export_dir, load_encoder
from models.mae import Encoder, MAEConfig, normalize_video

# The module that implements each task of the catalog (contracts.tasks); the catalog says which exist.
TASKS: dict[str, type[Task]] = {t.name: t for t in (PointTracking, CameraPose, Depth, BoxTracking, Action)}
assert set(TASKS) == set(CATALOG), "evals/run.py TASKS must implement exactly the catalog's tasks"
SPLITS = ("train", "val", "test")


def load_clips(cfg: MAEConfig, world: World, split: str, n: int, cache: ArrayCache | None = None) -> Clips:
    """The first n clips of a SyntheticWorld split at the encoder's frames and size, stacked (cached)."""
    key = f"clips/{cfg.frames}x{cfg.size}/{world.model_dump_json()}/{split}/{n}"

    def build() -> Clips:
        w = SyntheticWorld(
            frames=cfg.frames,
            size=cfg.size,
            seed=0,
            objects=world.objects,
            points=world.points,
            focal=world.focal,
            split=split,
        )
        items = [w[i] for i in range(n)]
        return {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0]}

    return (cache or CACHE).get(key, build)


def encoder_features(
    encoder: Encoder, video: np.ndarray, depth_fraction: float, grad: bool = False, batch_size: int = 32
) -> torch.Tensor:
    """video (M, T, S, S, 3) uint8 -> features (M, N, D) from the block at depth_fraction."""
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, len(video), batch_size):
        x = normalize_video(torch.from_numpy(np.asarray(video[i : i + batch_size])).to(device))
        if grad:  # Encoder.features is no_grad; finetuning runs the same blocks with autograd on
            out.append(encoder.run_blocks(encoder.embed(x), upto=encoder.feature_block(depth_fraction)))
        else:
            out.append(encoder.features(x, depth_fraction))
    return torch.cat(out)


def frozen_features(
    export_path,
    encoder: Encoder,
    clips_key: str,
    video: np.ndarray,
    depth_fraction: float,
    cache: ArrayCache | None = None,
) -> np.ndarray:
    """Features (M, N, D) of a split, computed once per (checkpoint, split, depth) and cached."""
    w = export_dir(export_path) / WEIGHTS
    st = w.stat()  # exports are written atomically and never changed: path + size + mtime name the weights
    key = f"feats/{w.resolve()}/{st.st_size}/{st.st_mtime_ns}/{depth_fraction}/{clips_key}"

    def compute():
        return {"f": encoder_features(encoder, video, depth_fraction).float().cpu().numpy()}

    return (cache or CACHE).get(key, compute)["f"]


def evaluate(
    export_path,
    task: str,
    mode: str = "frozen",
    readout: Readout = Readout(),
    data: Data = Data(),
    device: str = "cpu",
    progress: Callable[[dict], None] | None = None,
    cache_features: bool = True,
) -> dict[str, float]:
    """Metrics and `baseline_` metrics on test for one task (see module docstring)."""
    return evaluate_many(export_path, [task], mode, readout, data, device, progress, cache_features)[task]


def evaluate_many(
    export_path,
    tasks: list[str],
    mode: str = "frozen",
    readout: Readout = Readout(),
    data: Data = Data(),
    device: str = "cpu",
    progress: Callable[[dict], None] | None = None,
    cache_features: bool = True,
) -> dict[str, dict[str, float]]:
    """Several tasks on one checkpoint, sharing its clips and frozen features."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or mode not in MODES:
        raise ValueError(
            f"unknown task {unknown} or mode {mode!r}; tasks: {list(TASKS)}, modes: {list(MODES)}"
        )
    encoder, _ = load_encoder(export_path, device)
    cfg = encoder.cfg
    world = getattr(data, "world", World())
    sizes = dict(zip(SPLITS, (readout.train_clips, readout.val_clips, readout.test_clips), strict=True))
    clips = {s: load_clips(cfg, world, s, n) for s, n in sizes.items()}

    def cached(split: str) -> np.ndarray:
        key = f"{cfg.frames}x{cfg.size}/{world.model_dump_json()}/{split}/{sizes[split]}"
        return frozen_features(export_path, encoder, key, clips[split]["video"], readout.depth_fraction)

    results = {}
    for name in tasks:
        task = TASKS[name](cfg, clips["train"])
        if mode == "finetune":
            enc = copy.deepcopy(encoder)  # every task starts from the checkpoint

            def feats(split, idx, train, enc=enc):
                return encoder_features(
                    enc, clips[split]["video"][idx.numpy()], readout.depth_fraction, grad=train
                )
        elif cache_features:
            enc, store = None, {s: cached(s) for s in SPLITS}

            def feats(split, idx, train, store=store):
                return torch.from_numpy(store[split][idx.numpy()]).to(device)
        else:  # frozen, recomputed every time: what the cache saves (benchmarks/eval_cache.py)
            enc = None

            def feats(split, idx, train):
                return encoder_features(encoder, clips[split]["video"][idx.numpy()], readout.depth_fraction)

        results[name] = fit_and_score(task, feats, clips, readout, enc, device, progress)
    return results


def fit_and_score(
    task: Task,
    feats: Callable,
    clips: dict[str, Clips],
    readout: Readout,
    encoder: Encoder | None = None,
    device: str = "cpu",
    progress: Callable[[dict], None] | None = None,
) -> dict[str, float]:
    """Train a readout for `task` on train (and `encoder` too, when given), pick the best epoch on val,
    return test metrics and the baseline's. feats(split, idx (B,), train) -> (B, N, D)."""
    cfg = task.cfg
    inputs = {s: task.inputs(clips[s]) for s in SPLITS}
    torch.manual_seed(readout.seed)
    head = AttentionReadout(
        cfg.encoder.width,
        cfg.grid,
        task.out_dim,
        task.num_queries,
        task.cond_dim,
        readout.width,
        readout.heads,
        task.samples,
        task.joint,
    ).to(device)
    groups = [{"params": list(head.parameters()), "lr": readout.lr}]
    if encoder is not None:
        groups.append({"params": list(encoder.parameters()), "lr": readout.lr * readout.finetune_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=readout.weight_decay)
    M = len(clips["train"]["video"])
    total = readout.epochs * math.ceil(M / readout.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    order = torch.Generator().manual_seed(readout.seed)
    modules = [m for m in (head, encoder) if m is not None]

    def batch(split, idx):
        return {k: v[idx].to(device) for k, v in inputs[split].items()}

    def run_head(f, b):
        return head(f, b.get("cond"), b.get("where"))

    @torch.no_grad()
    def predict(split) -> torch.Tensor:  # (M, Q, O) on the CPU
        for m in modules:
            m.eval()
        idx = torch.arange(len(clips[split]["video"]))
        return torch.cat(
            [
                run_head(feats(split, i, False), batch(split, i)).float().cpu()
                for i in idx.split(4 * readout.batch_size)
            ]
        )

    sign = 1.0 if higher_is_better(task.headline) else -1.0
    best_score, best_state = -math.inf, None
    for epoch in range(readout.epochs):
        for m in modules:
            m.train()
        losses = []
        for idx in torch.randperm(M, generator=order).split(readout.batch_size):
            b = batch("train", idx)
            loss = task.loss(run_head(feats("train", idx, True), b), b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val = task.metrics(predict("val"), clips["val"])[task.headline]
        score = sign * val if math.isfinite(val) else -math.inf
        if best_state is None or score > best_score:
            best_score, best_state = score, [copy.deepcopy(m.state_dict()) for m in modules]
        if progress:
            progress(
                {
                    "task": task.name,
                    "epoch": epoch + 1,
                    "epochs": readout.epochs,
                    "loss": float(np.mean(losses)),
                    f"val_{task.headline}": val,
                }
            )
    for m, state in zip(modules, best_state, strict=True):
        m.load_state_dict(state)
    task.tune(predict("val"), clips["val"])
    test = task.metrics(predict("test"), clips["test"])
    base = task.baseline(clips["test"])
    return {k: float(v) for k, v in test.items()} | {f"baseline_{k}": float(v) for k, v in base.items()}
