"""The worker side of pretraining: what every Ray Train worker of a rung runs.

`train_loop` reads as the run does, top to bottom:

    worker = start_worker(config)        this process's rank, device and process group
    engine = build_engine(worker)        the model, AdamW and LR schedule under DeepSpeed ZeRO
    start  = resume(engine, worker)      the newest valid checkpoint; a Ray Train restart noted
    sinks  = MetricSinks.open(...)       rank 0: MLflow, metrics.jsonl, progress.json
    each step: train_step -> step_metrics -> [val_loss] -> sinks.log -> save_checkpoint when due

Batches and masks are pure functions of (seed, step, rank), so a resumed run logs the same
losses as one never stopped. The driver side (the TorchTrainer, outcomes): orchestrator.pretrain.

Run directories on a store (contracts.storage). Each rank writes its ZeRO shards to a local
cache dir, on the step, and uploads them in a background thread (`Publish`) while training goes
on; rank 0's thread also waits for every rank's upload, builds the export from the shards and
writes the manifest last (orchestrator.checkpoint). The next checkpoint first waits for the
previous one's upload: that wait is logged as train/ckpt_wait_s. An upload that kept failing
raises there, naming the bucket and key; the checkpoints before it are untouched. Resuming, each
rank downloads only its own shards of the newest checkpoint every rank could verify.

Held-out loss. Before every checkpoint, `val_loss` runs the MAE on a fixed held-out set
(`held_out`): the first `pretraining.val_clips` clips of the synthetic world's `val` split,
which pretraining never reads, each with a mask drawn once from VAL_SEED, so every rung of a
sweep (and every pretraining seed) is measured on the same clips and masks. It is logged as
val/loss at the checkpoint's step (MLflow, metrics.jsonl) and sealed into the checkpoint's
manifest. Real sources (video_folder, webdataset) have no val/loss: the stream reads every
clip of them, and holding some out would change which clips existing rungs train on.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import takewhile
from pathlib import Path

import torch
import torch.distributed as dist

from contracts.cost import flops_per_clip
from contracts.layout import (
    DS_TAG,
    EXPORT,
    PROBE,
    RungPaths,
    json_text,
    read_json,
    read_jsonl,
    read_text,
    write_json,
    write_text,
)
from contracts.names import CKPT_WAIT_METRIC, RESTARTS_METRIC, RESTARTS_TAG, VAL_LOSS_METRIC
from contracts.spec import RungConfig
from contracts.storage import cache_path, is_remote, root_of, where
from data4d.stream import PretrainStream, held_out_clips
from models.export import save_encoder
from models.mae import VideoMAE, fp32_draws, normalize_video, param_groups, random_masking
from orchestrator import checkpoint as ckpt

# Dense bf16 peaks (FLOP/s) for MFU, by device name fragment.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
SYSTEM_EVERY_S = 10.0
RECORDS_EVERY_S = 5.0  # on a store: how often rank 0's per-step records are put, at most
VAL_SEED = 0  # the held-out clips' masks: the same for every rung and every pretraining seed


# ------------------------------------------------------------------ pure pieces


def deepspeed_config(rung: RungConfig, workers: int) -> dict:
    accum = rung.batch_size // (rung.micro_batch_size * workers)
    gpu = rung.gpus > 0
    return {
        "train_batch_size": rung.batch_size,
        "train_micro_batch_size_per_gpu": rung.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": rung.optimizer.grad_clip,
        "bf16": {"enabled": rung.precision == "bf16"},
        "zero_optimization": {
            "stage": rung.zero_stage,
            "overlap_comm": gpu,
            "contiguous_gradients": True,
            "reduce_bucket_size": 5e7,
            "stage3_prefetch_bucket_size": 5e7,
            "stage3_param_persistence_threshold": 1e5 if gpu else 0,  # on CPU keep everything partitioned
        },
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW (fused on GPU)
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def lr_factor(step: int, rung: RungConfig) -> float:
    """Multiplier of the base LR at optimiser step `step` (0-based): linear warmup, then cosine or
    constant."""
    s = rung.schedule
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.kind == "constant":
        return 1.0
    progress = min(1.0, (step - s.warmup_steps) / max(1, rung.steps - s.warmup_steps))
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def mask_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 10_007 + rank


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def system_metrics(device: torch.device) -> dict[str, float]:
    """This worker's node, under the names MLflow's UI shows in its System metrics tab."""
    import psutil

    mem = psutil.virtual_memory()
    out = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(),
        "system/system_memory_usage_megabytes": (mem.total - mem.available) / 2**20,
        "system/system_memory_usage_percentage": mem.percent,
    }
    if device.type == "cuda":
        i = device.index or 0
        out[f"system/gpu_{i}_memory_usage_megabytes"] = torch.cuda.memory_allocated(device) / 2**20
        out[f"system/gpu_{i}_peak_memory_megabytes"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def step_metrics(
    rung: RungConfig, loss: float, lr: float, grad_norm, seconds: float, world: int, peak: float | None
) -> dict[str, float]:
    """One optimiser step's training metrics, under their MLflow names."""
    flops_step = flops_per_clip(rung.model).train * rung.batch_size
    metrics = {
        "train/loss": loss,
        "train/lr": lr,
        "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "train/clips_per_s": rung.batch_size / seconds,
        "train/tokens_per_s": rung.batch_size * rung.model.num_tokens / seconds,
        "train/tflops": flops_step / seconds / 1e12,
    }
    if peak:
        metrics["train/mfu"] = flops_step / seconds / (peak * world)
    return metrics


def divergence(loss: float, step: int) -> str | None:
    """Why training must stop at `step` (1-based), or None while the loss is finite."""
    if math.isfinite(loss):
        return None
    return f"loss is {loss} at step {step}: training diverged (lower the learning rate or add warmup)"


# ------------------------------------------------------------------ records rank 0 keeps


def append_jsonl(path: Path, rec: dict) -> None:
    with path.open("a") as f:  # on a store, s3fs rewrites the object: for rare records only
        f.write(json.dumps(rec) + "\n")


def keep_steps_upto(path: Path, step: int) -> None:
    """Drop the lines of a per-step JSON-lines record past `step` (they are about to be trained
    again), atomically; the kept lines are copied byte for byte, a torn last line is dropped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text(path, "".join(kept))


def note_restart(paths: RungPaths, launch: str | None, resumed_from: int, max_failures: int) -> dict | None:
    """Rank 0, as a worker group starts: if an earlier group of this same fit (`launch`) wrote
    resume.json, Ray Train is restarting it after a failure. Appends the restart to
    restarts.jsonl and returns it; None for the first group of a fit."""
    before = read_json(paths.resume) or {}
    if launch is None or before.get("launch") != launch:
        return None
    rec = {
        "attempt": before.get("attempt", 0) + 1,
        "max_failures": max_failures,
        # progress.json still holds the last step the failed group finished.
        "died_at_step": (read_json(paths.progress) or {}).get("step", before.get("step", 0)),
        "resumed_from": resumed_from,
        "time": time.time(),
    }
    append_jsonl(paths.restarts, rec)
    return rec


class RunLog:
    """One MLflow run as a worker sees it through the tracker actor (orchestrator.tracking.Tracker):
    writes are sent without waiting, reads wait for the answer."""

    def __init__(self, tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics.remote(self.run_id, metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tracker.set_tags.remote(self.run_id, tags)

    def last_steps(self) -> dict[str, int]:
        import ray

        return ray.get(self.tracker.last_steps.remote(self.run_id))


class RecordUploads:
    """Rank 0's per-step records on a store (metrics.jsonl, system.jsonl, progress.json). A store
    cannot append: a record is one PUT of its whole text, and a PUT on the training step would
    stall every rank once a step. So the text is kept here and put by a background thread, the
    newest text of each record at most every RECORDS_EVERY_S, and everything before a checkpoint is
    sealed (`flush`): a crash loses only lines past the newest checkpoint, which the resumed run
    trains, and writes, again."""

    def __init__(self):
        self.lines: dict[Path, list[str]] = {}  # a JSON-lines record's whole text
        self.texts: dict[Path, str] = {}  # a record replaced whole
        self.dirty: set[Path] = set()
        self.asked = self.done = 0  # changes made / changes put
        self.flushing = 0
        self.next_put = 0.0
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        threading.Thread(target=self._run, name="record uploads", daemon=True).start()

    def start(self, path: Path, text: str) -> None:
        with self.cond:
            self.lines[path] = text.splitlines(keepends=True)

    def append(self, path: Path, line: str) -> None:
        with self.cond:
            self.lines.setdefault(path, []).append(line)
            self._changed(path)

    def replace(self, path: Path, text: str) -> None:
        with self.cond:
            self.texts[path] = text
            self._changed(path)

    def _changed(self, path: Path) -> None:
        self.dirty.add(path)
        self.asked += 1
        self.cond.notify_all()

    def flush(self) -> None:
        """Return once every change made before the call is in the store; raise if a put failed."""
        with self.cond:
            target = self.asked
            self.flushing += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.done >= target or self.error is not None)
            self.flushing -= 1
        if self.error is not None:
            raise RuntimeError(f"a run record was not stored: {self.error}") from self.error

    def _run(self) -> None:
        while True:
            with self.cond:
                while not (self.dirty and (self.flushing or time.monotonic() >= self.next_put)):
                    self.cond.wait(max(0.05, self.next_put - time.monotonic()) if self.dirty else None)
                upto, paths, self.dirty = self.asked, self.dirty, set()
                # joined here, at most once a put, not once a step
                batch = {p: self.texts[p] if p in self.texts else "".join(self.lines[p]) for p in paths}
            try:
                for path, text in batch.items():
                    write_text(path, text)  # retried (contracts.layout)
            except BaseException as e:  # raised by flush(), in the training or upload thread
                with self.cond:
                    self.error = e
                    self.cond.notify_all()
                return
            with self.cond:
                self.done, self.next_put = upto, time.monotonic() + RECORDS_EVERY_S
                self.cond.notify_all()


class MetricSinks:
    """Where rank 0 sends each step's metrics: metrics.jsonl (and system.jsonl) first, then MLflow
    (through the tracker actor), and progress.json.

    After a resume, each keeps one value per step: metrics.jsonl drops the steps past the
    checkpoint (they are trained again), and MLflow, whose log_batch only appends to a metric's
    history, is sent no step it already holds for that key. The replayed values are bitwise the
    same, so what is kept is what an uninterrupted run would have logged.

    `mlflow` is a RunLog (or anything with its three methods), or None to skip MLflow.
    """

    def __init__(
        self,
        paths: RungPaths,
        total_steps: int,
        device: torch.device,
        mlflow=None,
        logged: dict[str, int] | None = None,
    ):
        self.paths, self.total, self.device, self.mlflow = paths, total_steps, device, mlflow
        self.logged = dict(logged or {})  # metric key -> highest step MLflow already holds
        self.uploads = None  # on a store: the records go up in the background
        if is_remote(paths.root):
            self.uploads = RecordUploads()
            for path in (paths.metrics, paths.system):
                try:
                    self.uploads.start(path, read_text(path))
                except FileNotFoundError:
                    self.uploads.start(path, "")
        self.last_system = 0.0
        system_metrics(device)  # psutil's CPU figure is "since the last call": start the clock

    @classmethod
    def open(
        cls, paths: RungPaths, total_steps: int, device: torch.device, mlflow, resumed_from: int
    ) -> MetricSinks:
        keep_steps_upto(paths.metrics, resumed_from)
        keep_steps_upto(paths.system, resumed_from)
        logged = mlflow.last_steps() if mlflow is not None else {}  # once, not every step
        return cls(paths, total_steps, device, mlflow, logged)

    def log(self, step: int, metrics: dict[str, float], loss: float) -> None:
        # Disk first, then MLflow: what MLflow holds is always on disk, and what a crash kept
        # from MLflow (a lost tracker buffer) the next reconciliation restores from disk.
        system = None
        if time.monotonic() - self.last_system >= SYSTEM_EVERY_S or step == self.total:
            system = system_metrics(self.device)
            self.last_system = time.monotonic()
            self._append(self.paths.system, {"step": step, **system})
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        self._append(self.paths.metrics, {"step": step, **finite})
        if self.mlflow is not None:
            if system:
                self._to_mlflow(system, step)
            self._to_mlflow(finite, step)  # the same points as the disk record
        progress = {
            "step": step,
            "total": self.total,
            "loss": loss,
            "clips_per_s": metrics["train/clips_per_s"],
            "time": time.time(),
        }
        if self.uploads:
            self.uploads.replace(self.paths.progress, json_text(progress))
        else:
            write_json(self.paths.progress, progress)

    def _append(self, path: Path, rec: dict) -> None:
        if self.uploads:
            self.uploads.append(path, json.dumps(rec) + "\n")
        else:
            append_jsonl(path, rec)

    def flush(self) -> None:
        """On a store: put every record logged so far (before a checkpoint is sealed, at the end)."""
        if self.uploads:
            self.uploads.flush()

    def _to_mlflow(self, metrics: dict[str, float], step: int) -> None:
        new = {k: v for k, v in metrics.items() if step > self.logged.get(k, 0)}
        if new:
            self.mlflow.log_metrics(new, step)

    def log_restart(self, restart: dict) -> None:
        """The restart count, as a metric at the step the failed group reached and as a tag."""
        if self.mlflow is None:
            return
        count = len(read_jsonl(self.paths.restarts))
        self.mlflow.log_metrics({RESTARTS_METRIC: count}, restart["died_at_step"])
        self.mlflow.set_tags({RESTARTS_TAG: str(count)})


# ------------------------------------------------------------------ the worker


@dataclass(frozen=True)
class Worker:
    """This process's place in the rung's worker group."""

    rung: RungConfig
    paths: RungPaths
    rank: int
    world: int
    device: torch.device

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def per_rank(self) -> int:
        return self.rung.batch_size // self.world

    @property
    def dtype(self) -> torch.dtype:
        """What the engine's parameters hold."""
        return torch.bfloat16 if self.rung.precision == "bf16" else torch.float32


@dataclass(frozen=True)
class Start:
    step: int  # the checkpoint step training resumes from (0: from scratch)
    restart: dict | None  # set when Ray Train restarted this fit's worker group (rank 0 only)


def start_worker(config: dict) -> Worker:
    import deepspeed
    import ray.train as train

    rung = RungConfig.from_dict(config["rung"])
    ctx = train.get_context()
    gpu = rung.gpus > 0
    device = torch.device("cuda", ctx.get_local_rank()) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(rung.cpus_per_worker)
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")  # reuses the group Ray Train set up
    paths = RungPaths(root_of(config["run_dir"]))
    return Worker(rung, paths, ctx.get_world_rank(), ctx.get_world_size(), device)


def build_engine(worker: Worker):
    """The model on every rank, partitioned as it is created; AdamW; the LR schedule.
    -> (engine, scheduler)"""
    import deepspeed

    rung = worker.rung
    ds_config = deepspeed_config(rung, worker.world)
    torch.manual_seed(rung.seed)
    # fp32_draws: under ZeRO-3 + bf16 the weights are drawn in fp32, then rounded (models.mae).
    with deepspeed.zero.Init(enabled=rung.zero_stage == 3, config_dict_or_path=ds_config), fp32_draws():
        model = VideoMAE(rung.model)
    model.encoder.activation_checkpointing = rung.activation_checkpointing
    o = rung.optimizer
    groups = param_groups(model, o.lr, o.weight_decay)  # the first group is at the base LR (the one logged)
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, fused=worker.gpu)
    schedule = partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=partial(lr_factor, rung=rung))
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config
    )
    return engine, scheduler


def resume(engine, worker: Worker, launch: str | None, max_failures: int) -> Start:
    """Load Ray's latest registered checkpoint, or an older one if it is corrupt, or the newest
    valid one on disk. Rank 0 records where this worker group started (resume.json)."""
    import ray.train as train

    key, paths = worker.rung.key, worker.paths
    if is_remote(paths.root):
        registered = None  # on a store the manifests are the only record (checkpoints are not registered)
        found, warnings = resume_from_store(engine, worker)
    else:
        registered = train.get_checkpoint()
        start_from = Path(registered.path) if registered else None
        found, warnings = ckpt.latest_valid(paths.root, start_from=start_from)
        if found is not None:
            engine.load_checkpoint(str(found.path), tag=DS_TAG, load_module_strict=True)
    step = found.step if found is not None else 0
    if worker.rank != 0:
        return Start(step, None)
    for w in warnings:
        print(f"WARNING [{key}] {w}", flush=True)
    if found is not None:
        found_in = (
            "" if registered else " (found in the store)" if is_remote(paths.root) else " (found on disk)"
        )
        print(f"[{key}] resuming from {found.path}{found_in}", flush=True)
    restart = note_restart(paths, launch, step, max_failures)
    write_json(
        paths.resume,
        {
            "step": step,
            "warnings": warnings,
            "time": time.time(),
            "launch": launch,
            "attempt": restart["attempt"] if restart else 0,
        },
    )
    return Start(step, restart)


def resume_from_store(engine, worker: Worker) -> tuple[ckpt.Found | None, list[str]]:
    """Load the newest checkpoint every rank can use: its manifest and sizes match the store (the
    same answer on every rank) and this rank's own shards download with matching checksums (agreed
    by all-reduce, so every rank loads the same step). -> (the checkpoint or None, warnings)"""
    warnings: list[str] = []
    for c in reversed(ckpt.step_dirs(worker.paths.root)):
        reason = ckpt.verify(c.path)
        local = cache_path(c.path) / f"rank{worker.rank}"
        shutil.rmtree(local, ignore_errors=True)
        if reason is None:
            reason = ckpt.fetch_shards(c.path, ckpt.read_manifest(c.path), worker.rank, local)
        usable = torch.tensor(int(reason is None))
        dist.all_reduce(usable, op=dist.ReduceOp.MIN)
        if usable.item():
            engine.load_checkpoint(str(local), tag=DS_TAG, load_module_strict=True)
            shutil.rmtree(local, ignore_errors=True)
            return c, warnings
        shutil.rmtree(local, ignore_errors=True)
        warnings.append(ckpt.skipped(c.path, reason or "another rank's shards did not download intact"))
    return None, warnings


def record_worker(engine, worker: Worker, start: int) -> None:
    """Who ran where, and how much of the model each rank holds (ZeRO-3 partitioning)."""
    import ray

    params = engine.module.parameters()
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    write_json(
        worker.paths.worker(worker.rank),
        {
            "rank": worker.rank,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": os.uname().nodename,
            "local_param_elements": local,
            "total_param_elements": worker.rung.total_params,
            "start_step": start,
            "time": time.time(),
        },
    )


def batches(worker: Worker, start: int):
    """(step, clips) from `start` to the last step; clips: (per_rank, T, S, S, 3) uint8."""
    rung = worker.rung
    stream = PretrainStream(rung.data, rung.seed, worker.per_rank, worker.rank, worker.world)
    if worker.gpu or rung.data.workers:
        # Decode the next batches while this one trains: in data.workers processes, else in one
        # background thread, on GPU workers only (on CPU ones it would take the step's cores).
        ahead = stream.iter_from(start, workers=rung.data.workers)
        return takewhile(lambda item: item[0] < rung.steps, ahead)
    return ((s, stream.batch(s)) for s in range(start, rung.steps))


def train_step(engine, worker: Worker, step: int, clips: torch.Tensor) -> float:
    """One optimiser step over this rank's clips, in micro-batches. -> the mean loss over all ranks."""
    rung, device = worker.rung, worker.device
    per_rank, micro = worker.per_rank, rung.micro_batch_size
    mask_gen = torch.Generator().manual_seed(mask_seed(rung.seed, step, worker.rank))
    visible, masked = random_masking(per_rank, rung.model, mask_gen)
    loss_sum = torch.zeros((), device=device)
    for i in range(0, per_rank, micro):
        video = normalize_video(clips[i : i + micro].to(device, non_blocking=True)).to(worker.dtype)
        loss = engine(
            video,
            visible[i : i + micro].to(device, non_blocking=True),
            masked[i : i + micro].to(device, non_blocking=True),
        )
        engine.backward(loss)
        engine.step()  # DeepSpeed steps the optimiser only at the accumulation boundary
        loss_sum += loss.detach().float()
    dist.all_reduce(loss_sum)
    return loss_sum.item() / (worker.world * (per_rank // micro))


@dataclass(frozen=True)
class HeldOut:
    """This rank's share of the held-out set: clips rank, rank + world, ... of `total`, with their
    fixed masks, forwarded in `calls` batches of `batch` (the same count on every rank). A rank with
    no share (more workers than clips) holds clip 0, counted 0, to forward with the others."""

    video: torch.Tensor  # (max(n, 1), T, S, S, 3) uint8
    count: int  # n: the clips of this rank's share
    visible: torch.Tensor  # (n, K)
    masked: torch.Tensor  # (n, N - K)
    total: int
    batch: int
    calls: int


def held_out(worker: Worker) -> HeldOut | None:
    """The held-out set (module docstring), or None where the rung has none."""
    rung = worker.rung
    n = rung.val_clips
    if n == 0 or rung.data.source != "synthetic":
        return None
    # Masks for all n clips from one generator: clip i's mask does not depend on the worker count.
    visible, masked = random_masking(n, rung.model, torch.Generator().manual_seed(VAL_SEED))
    mine = torch.arange(worker.rank, n, worker.world)
    count = len(mine)
    mine = mine if count else torch.zeros(1, dtype=torch.long)
    batch = rung.micro_batch_size
    calls = math.ceil(math.ceil(n / worker.world) / batch)
    video = held_out_clips(rung.data, mine.tolist())
    return HeldOut(video, count, visible[mine], masked[mine], n, batch, calls)


def val_loss(engine, worker: Worker, held: HeldOut) -> float:
    """Mean MAE loss over the held-out clips, in eval mode without gradients, on every rank: under
    ZeRO-3 each forward gathers the parameters from all ranks, so every rank makes the same number
    of calls (one out of clips forwards its first clip again, counted 0)."""
    device = worker.device
    total = torch.zeros((), dtype=torch.float64)
    engine.eval()
    with torch.no_grad():
        for c in range(held.calls):
            part, weight = slice(c * held.batch, (c + 1) * held.batch), 1.0
            if part.start >= held.count:
                part, weight = slice(0, 1), 0.0
            video = normalize_video(held.video[part].to(device)).to(worker.dtype)
            visible, masked = held.visible[part].to(device), held.masked[part].to(device)
            losses = engine.module(video, visible, masked, per_clip=True)
            total += losses.double().sum().cpu() * weight
    engine.train()
    total = total.to(device)
    dist.all_reduce(total)
    return total.item() / held.total


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train as train

    worker = start_worker(config)
    rung = worker.rung
    engine, scheduler = build_engine(worker)
    start = resume(engine, worker, config.get("launch"), config.get("max_failures", 0))
    record_worker(engine, worker, start.step)
    held = held_out(worker)
    sinks = None
    if worker.rank == 0:
        tracker = config.get("tracker")
        mlflow = RunLog(tracker, config["run_id"]) if tracker is not None else None
        sinks = MetricSinks.open(worker.paths, rung.steps, worker.device, mlflow, resumed_from=start.step)
        if start.restart:
            sinks.log_restart(start.restart)
    peak = peak_flops(worker.device)
    publishing: Publish | None = None  # on a store: the last checkpoint's upload, still going on
    engine.train()
    t0 = time.perf_counter()
    for step, clips in batches(worker, start.step):
        lr = scheduler.get_last_lr()[0]
        loss = train_step(engine, worker, step, clips)
        seconds = time.perf_counter() - t0  # this step's data + compute; checkpoint time is not counted
        metrics = step_metrics(rung, loss, lr, engine.get_global_grad_norm(), seconds, worker.world, peak)
        done = step + 1
        failure = divergence(loss, done)
        if failure:
            metrics.pop("train/loss")
        due = done % rung.checkpoint_interval == 0 or done == rung.steps
        if due and held is not None and not failure:  # every rank: the forward needs all of them
            metrics[VAL_LOSS_METRIC] = val_loss(engine, worker, held)
        if (due or failure) and publishing is not None:  # one upload in flight at a time
            metrics[CKPT_WAIT_METRIC] = publishing.wait()
            publishing = None
        if sinks:
            sinks.log(done, metrics, loss)
        if failure:
            if worker.rank == 0:
                print(f"ERROR [{rung.key}] {failure}", flush=True)
                sinks.flush()
                write_json(worker.paths.failure, {"reason": failure, "step": done})
            # Ends the run without an exception: a divergence would only repeat if Ray retried it.
            train.report({"step": done, "loss": loss})
            return
        if due:
            held_loss = {"val_loss": metrics[VAL_LOSS_METRIC]} if VAL_LOSS_METRIC in metrics else {}
            publishing = save_checkpoint(
                engine,
                worker,
                done,
                {"step": done, "loss": loss, **held_loss},
                sinks.flush if sinks else None,
            )
        t0 = time.perf_counter()
    if publishing is not None:  # the final checkpoint is sealed before the worker returns
        waited = publishing.wait()
        if worker.rank == 0:
            print(f"[{rung.key}] final checkpoint uploaded (waited {waited:.1f}s)", flush=True)
    if sinks:
        sinks.flush()


# ------------------------------------------------------------------ checkpoints


def probe_features(engine, rung: RungConfig) -> dict[str, torch.Tensor]:
    """The engine's own features for one fixed clip, kept to check the export against."""
    gen = torch.Generator().manual_seed(rung.seed)
    video = torch.randint(
        0, 256, (1, rung.model.frames, rung.model.size, rung.model.size, 3), generator=gen, dtype=torch.uint8
    )
    every = torch.arange(rung.model.num_tokens)[None]
    engine.eval()
    with torch.no_grad():
        x = normalize_video(video).to(engine.device)
        dtype = next(iter(engine.module.parameters())).dtype
        feats = engine.module.encoder(x.to(dtype), every.to(engine.device))
    engine.train()
    return {"video": video, "features": feats.float().cpu()}


def save_checkpoint(
    engine, worker: Worker, step: int, metrics: dict, flush_records: Callable[[], None] | None = None
) -> Publish | None:
    """Every rank writes its ZeRO shards; rank 0 exports the encoder and seals the checkpoint. On
    disk that is done when this returns; on a store the upload goes on in the returned `Publish`,
    where rank 0 puts its run records (`flush_records`) before the manifest."""
    if is_remote(worker.paths.root):
        return save_to_store(engine, worker, step, metrics, flush_records)
    import ray.train as train
    from ray.train import Checkpoint, CheckpointUploadMode

    rung, paths, rank = worker.rung, worker.paths, worker.rank
    staging, final_dir = paths.staging(step), paths.checkpoint(step)
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(staging), tag=DS_TAG)
    probe = probe_features(engine, rung) if step == rung.steps else None
    dist.barrier()
    if rank == 0:
        export_encoder(staging, rung, probe)
        ckpt.seal(staging, final_dir, step, rung.key, extra=manifest_extra(worker, metrics))
    dist.barrier()
    train.report(
        metrics,
        checkpoint=Checkpoint.from_directory(str(final_dir)) if rank == 0 else None,
        checkpoint_dir_name=f"checkpoints/step_{step:08d}",
        checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
    )
    return None


def export_encoder(ckpt_dir: Path, rung: RungConfig, probe: dict | None) -> None:
    """The consolidated fp32 encoder (DeepSpeed's zero_to_fp32 over every rank's shards in
    `ckpt_dir`) as the safetensors export evals read, with the final checkpoint's probe."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import save_file

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=DS_TAG)
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    save_encoder(encoder, rung.to_dict(), ckpt_dir / EXPORT)
    if probe is not None:
        save_file(probe, str(ckpt_dir / EXPORT / PROBE))


def manifest_extra(worker: Worker, metrics: dict) -> dict:
    held = {"val_loss": metrics["val_loss"]} if "val_loss" in metrics else {}  # val/loss at this step
    return {"world_size": worker.world, "time": time.time(), **held}


class Publish:
    """One rank's upload of one checkpoint, in a background thread so training goes on meanwhile."""

    def __init__(self, work, what: str):
        self.what, self.error = what, None
        self.thread = threading.Thread(target=self._run, args=(work,), name=f"publish {what}", daemon=True)
        self.thread.start()

    def _run(self, work) -> None:
        try:
            work()
        except BaseException as e:  # raised in the training thread by wait()
            self.error = e

    def wait(self) -> float:
        """Block until the upload is done. -> seconds waited; raises if it failed for good."""
        t0 = time.perf_counter()
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"checkpoint {self.what} was not stored: {self.error}") from self.error
        return time.perf_counter() - t0


def save_to_store(
    engine, worker: Worker, step: int, metrics: dict, flush_records: Callable[[], None] | None = None
) -> Publish:
    """On the step: every rank writes its shards to a local cache dir. Then, in the background:
    each rank uploads its own files; rank 0 waits for all of them, builds the export from the
    shards (downloading the other ranks'), uploads it and writes the manifest last."""
    import ray.train as train

    rung, paths, rank = worker.rung, worker.paths, worker.rank
    final_dir = paths.checkpoint(step)
    local = cache_path(paths.staging(step)) / f"rank{rank}"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    if rank == 0:  # what an earlier, interrupted attempt at this step left (never a sealed older step)
        ckpt.clear_remote(final_dir)
    dist.barrier()
    engine.save_checkpoint(str(local), tag=DS_TAG)
    probe = probe_features(engine, rung) if step == rung.steps else None
    extra = manifest_extra(worker, metrics)
    train.report(metrics)  # checkpoints on a store are found by their manifests, not registered with Ray

    def publish() -> None:
        mine = ckpt.upload_part(local, final_dir, rank)
        if rank == 0:
            files = ckpt.wait_for_parts(final_dir, worker.world)
            theirs = {rel: meta for rel, meta in files.items() if rel not in mine}
            reason = ckpt.fetch_files(final_dir, theirs, local)
            if reason:
                raise RuntimeError(f"{where(final_dir)}: {reason}")
            export_encoder(local, rung, probe)
            files |= {
                f"{EXPORT}/{rel}": m
                for rel, m in ckpt.upload_tree(local / EXPORT, final_dir / EXPORT).items()
            }
            if flush_records:  # the records up to this step, before the checkpoint exists
                flush_records()
            ckpt.seal_remote(final_dir, files, step, rung.key, extra=extra)
        shutil.rmtree(local, ignore_errors=True)

    return Publish(publish, f"{where(final_dir)} (rank {rank})")
