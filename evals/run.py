"""Train a readout on an exported encoder and score it: the one place evals are run.

    evaluate(export, "depth")                      -> {"abs_rel": …, "abs_rel_se": …, …,
                                                       "baseline_abs_rel": …, "baseline_abs_rel_se": …, …}
    evaluate_many(export, ["depth", "action"])     -> {"depth": {…}, "action": {…}}

Eval data are SyntheticWorld clips (seed 0, splits train / val / test) at the
encoder's own frames and resolution (the rung dict's `model`), with the world knobs
of `data.world`; a task named in `datasets` ({task: contracts.spec.EvalData}) reads
that dataset from disk instead (data4d.evalsets: its own splits or a seeded one, the
same frames and resolution, every geometric label transformed with the frames). The readout
trains with AdamW and a cosine schedule on train, the epoch with the best val headline metric
(task.headline) is kept, and test metrics are reported beside the trivial baseline's
(`baseline_<name>`).

Standard errors. Every metric (and baseline metric) comes with `<name>_se`: the spread of the
metric recomputed on BOOTSTRAP resamples of the test clips (evals.metrics.bootstrap_draws; a pooled
metric such as depth's AbsRel is re-pooled over each resample's clips). With readout.seeds = n > 1
the readout is trained n times (seeds seed .. seed + n - 1); the metric is the mean over seeds, and
se² = (bootstrap variance of that mean, the same resamples for every seed) + (variance between seeds) / n:
the test set's noise, shared by the seeds, plus the readout's, which the mean divides by n.

Modes: "frozen" reads features from the block at readout.depth_fraction of a fixed
encoder; they are computed once per (checkpoint, dataset, split) in batches under no_grad
(bf16 autocast on a GPU) and kept in `evals.cache.CACHE`,
so epochs and tasks in one process share them. "finetune" trains the encoder too,
at readout.lr * readout.finetune_lr_scale.

Cost: the readout settings decide it (a spec may change them per task, `evals.task_readout`).
With the local ladder's (width 64, 6 epochs, 512 / 64 / 128 clips; 20 epochs for point
tracking) one frozen eval of a micro encoder on 8x32x32 clips takes 5-15 s on a CPU core,
point tracking 25-50 s, most of it readout training.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable

import numpy as np
import torch

from contracts.names import se_name
from contracts.spec import Data, EvalData, Readout, World
from contracts.storage import cache_dir
from contracts.tasks import MODES, higher_is_better
from contracts.tasks import TASKS as CATALOG
from data4d.evalsets import load_splits
from data4d.stream import renderer_version
from data4d.world import SyntheticWorld
from evals.action import Action
from evals.box_tracking import BoxTracking
from evals.cache import CACHE, ArrayCache, DiskArrays
from evals.camera_pose import CameraPose
from evals.depth import Depth
from evals.metrics import bootstrap_draws, bootstrap_se, draws_se
from evals.point_tracking import PointTracking
from evals.readout import AttentionReadout
from evals.task import Clips, Task
from models.export import WEIGHTS, export_dir, load_encoder
from models.mae import Encoder, MAEConfig, normalize_video

# The module that implements each task of the catalog (contracts.tasks); the catalog says which exist.
TASKS: dict[str, type[Task]] = {t.name: t for t in (PointTracking, CameraPose, Depth, BoxTracking, Action)}
assert set(TASKS) == set(CATALOG), "evals/run.py TASKS must implement exactly the catalog's tasks"
SPLITS = ("train", "val", "test")
BOOTSTRAP = 1000  # resamples of the test clips per standard error (a 1000 x 128 count matrix: milliseconds)
BOOTSTRAP_SEED = 0  # the same resamples for every readout seed, rung and checkpoint


def rendered_clips() -> DiskArrays:
    """This machine's store of rendered eval clips (evals.cache.DiskArrays), versioned by the
    renderer's source and numpy's version."""
    return DiskArrays(cache_dir() / "eval-clips", renderer_version())


def load_clips(cfg: MAEConfig, world: World, split: str, n: int, cache: ArrayCache | None = None) -> Clips:
    """The first n clips of a SyntheticWorld split at the encoder's frames and size, stacked (cached
    in this process, and on this machine's disk for every process and run)."""
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

    return (cache or CACHE).get(key, lambda: rendered_clips().get(key, build))


def load_dataset_clips(
    cfg: MAEConfig, data: EvalData, task: str, sizes: dict[str, int], cache: ArrayCache | None = None
) -> tuple[dict[str, Clips], dict, str]:
    """A task's train/val/test Clips from a dataset on disk (cached), what they are
    ({"dataset", "split", "num_classes"?}), and the key that names them in the feature cache."""
    key = f"{cfg.frames}x{cfg.size}/{task}/{data.model_dump_json()}/{json.dumps(sizes, sort_keys=True)}"

    def build() -> dict[str, np.ndarray]:
        clips, info = load_splits(data, task, cfg.frames, cfg.size, sizes)
        entry = {f"{s}.{k}": v for s, c in clips.items() for k, v in c.items()}
        return entry | {
            "split_rule": np.array(info["split"]),
            "num_classes": np.array(info.get("num_classes", -1)),
        }

    e = (cache or CACHE).get("data/" + key, build)
    clips = {
        s: {k.partition(".")[2]: np.asarray(v) for k, v in e.items() if k.startswith(s + ".")} for s in SPLITS
    }
    info = {"dataset": data.label, "split": str(e["split_rule"])}
    if int(e["num_classes"]) >= 0:
        info["num_classes"] = int(e["num_classes"])
    return clips, info, key


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
        else:  # frozen: bf16 on a GPU, so a 3.8B encoder's features fit and run fast
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out.append(encoder.features(x, depth_fraction).float())
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
    datasets: dict[str, EvalData] | None = None,
    info: dict | None = None,
) -> dict[str, float]:
    """Metrics and `baseline_` metrics on test for one task (see module docstring)."""
    return evaluate_many(
        export_path, [task], mode, readout, data, device, progress, cache_features, datasets, info
    )[task]


def evaluate_many(
    export_path,
    tasks: list[str],
    mode: str = "frozen",
    readout: Readout = Readout(),
    data: Data = Data(),
    device: str = "cpu",
    progress: Callable[[dict], None] | None = None,
    cache_features: bool = True,
    datasets: dict[str, EvalData] | None = None,
    info: dict | None = None,
) -> dict[str, dict[str, float]]:
    """Several tasks on one checkpoint, sharing its clips and frozen features. `datasets` names a
    dataset on disk per task (others read the synthetic world); `info`, when given, is filled with
    {task: {"dataset": label, "split": how the splits were made}}."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or mode not in MODES:
        raise ValueError(
            f"unknown task {unknown} or mode {mode!r}; tasks: {list(TASKS)}, modes: {list(MODES)}"
        )
    encoder, _ = load_encoder(export_path, device)
    cfg = encoder.cfg
    world = getattr(data, "world", World())
    sizes = dict(zip(SPLITS, (readout.train_clips, readout.val_clips, readout.test_clips), strict=True))
    synthetic = {}  # the world's splits, loaded once for every task that reads them

    def task_clips(name: str) -> tuple[dict[str, Clips], dict, str]:
        if name in (datasets or {}):
            return load_dataset_clips(cfg, datasets[name], name, sizes)
        if not synthetic:
            synthetic.update({s: load_clips(cfg, world, s, n) for s, n in sizes.items()})
        return (
            synthetic,
            {"dataset": "synthetic", "split": "synthetic world splits"},
            f"{cfg.frames}x{cfg.size}/{world.model_dump_json()}",
        )

    results = {}
    for name in tasks:
        clips, about, clips_key = task_clips(name)
        if info is not None:
            info[name] = {"dataset": about["dataset"], "split": about["split"]}

        def cached(split: str, clips=clips, clips_key=clips_key) -> np.ndarray:
            key = f"{clips_key}/{split}/{sizes[split]}"
            return frozen_features(export_path, encoder, key, clips[split]["video"], readout.depth_fraction)

        extra = {"num_classes": about["num_classes"]} if name == "action" and "num_classes" in about else {}
        task = TASKS[name](cfg, clips["train"], **extra)
        if mode == "finetune":
            enc = copy.deepcopy(encoder)  # every task starts from the checkpoint

            def feats(split, idx, train, enc=enc, clips=clips):
                return encoder_features(
                    enc, clips[split]["video"][idx.numpy()], readout.depth_fraction, grad=train
                )
        elif cache_features:
            enc, store = None, {s: cached(s) for s in SPLITS}

            def feats(split, idx, train, store=store):
                return torch.from_numpy(store[split][idx.numpy()]).to(device)
        else:  # frozen, recomputed every time: what the cache saves (benchmarks/eval_cache.py)
            enc = None

            def feats(split, idx, train, clips=clips):
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
    feat_shape: tuple[int, tuple[int, int, int]] | None = None,
) -> dict[str, float]:
    """Train a readout for `task` on train (and `encoder` too, when given), pick the best epoch on val,
    return test metrics and the baseline's, each with its standard error (module docstring), for
    readout.seeds seeds. feats(split, idx (B,), train) -> (B, N, D); feat_shape: (D, (t, h, w) grid)
    of those features when they are not the task's encoder's (a reference model, evals.reference)."""
    seeds = [readout.seed + i for i in range(readout.seeds)]
    start = copy.deepcopy(encoder.state_dict()) if encoder is not None and len(seeds) > 1 else None
    values, draws = [], []
    for seed in seeds:
        if start is not None:  # every seed finetunes from the checkpoint
            encoder.load_state_dict(start)
        out = train_readout(task, feats, clips, readout, seed, encoder, device, progress, feat_shape)
        values.append(task.metrics(out, clips["test"]))
        parts = task.metrics(out, clips["test"], per_clip=True)
        draws.append(bootstrap_draws(parts, BOOTSTRAP, BOOTSTRAP_SEED))
    test, se = {}, {}
    for k in values[0]:
        v = np.array([m[k] for m in values], np.float64)
        test[k] = float(v.mean())
        boot = draws_se(np.mean([d[k] for d in draws], axis=0)) if k in draws[0] else math.nan
        spread = v.var(ddof=1) / len(v) if len(v) > 1 else 0.0
        se[se_name(k)] = float(math.sqrt(boot**2 + spread))
    base = task.baseline(clips["test"])
    base_se = bootstrap_se(task.baseline(clips["test"], per_clip=True), BOOTSTRAP, BOOTSTRAP_SEED)
    return (
        {k: float(v) for k, v in test.items()}
        | se
        | {f"baseline_{k}": float(v) for k, v in base.items()}
        | {se_name(f"baseline_{k}"): float(v) for k, v in base_se.items()}
    )


def train_readout(
    task: Task,
    feats: Callable,
    clips: dict[str, Clips],
    readout: Readout,
    seed: int,
    encoder: Encoder | None = None,
    device: str = "cpu",
    progress: Callable[[dict], None] | None = None,
    feat_shape: tuple[int, tuple[int, int, int]] | None = None,
) -> torch.Tensor:
    """Train one readout with `seed`, keep its best epoch on val, tune the task on val ->
    its test outputs (M, Q, O)."""
    cfg = task.cfg
    width, grid = feat_shape or (cfg.encoder.width, cfg.grid)
    inputs = {s: task.inputs(clips[s]) for s in SPLITS}
    torch.manual_seed(seed)
    head = AttentionReadout(
        width,
        grid,
        task.out_dim,
        task.num_queries,
        task.cond_dim,
        readout.width,
        readout.heads,
        task.samples,
        task.joint,
        task.sample_width,
    ).to(device)
    groups = [{"params": list(head.parameters()), "lr": readout.lr}]
    if encoder is not None:
        groups.append({"params": list(encoder.parameters()), "lr": readout.lr * readout.finetune_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=readout.weight_decay)
    M = len(clips["train"]["video"])
    total = readout.epochs * math.ceil(M / readout.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    order = torch.Generator().manual_seed(seed)
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
                    "seed": seed,
                    "loss": float(np.mean(losses)),
                    f"val_{task.headline}": val,
                }
            )
    for m, state in zip(modules, best_state, strict=True):
        m.load_state_dict(state)
    task.tune(predict("val"), clips["val"])
    return predict("test")
