"""The engine and its resume: the worker's place, DeepSpeed ZeRO + AdamW + LR schedule, the newest checkpoint.

`start_worker` joins the process group Ray Train set up; `build_engine` creates the MAE partitioned
as it is built, with μP parameter groups and the warmup-then-cosine schedule (`lr_factor`); `resume`
loads Ray's registered checkpoint, or the newest valid one on disk or on a store, and records where
this worker group started (resume.json) and whether Ray Train restarted it (restarts.jsonl).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from contracts.layout import DS_TAG, RungPaths, read_json, write_json
from contracts.spec import RungConfig
from contracts.storage import cache_path, is_remote, root_of
from models.mae import VideoMAE, fp32_draws, param_groups
from orchestrator import checkpoint as ckpt
from orchestrator.training.sinks import append_jsonl


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


def skip_shared_memory_op() -> None:
    """Keep DeepSpeed's CPU backend from loading its C++ shared-memory op. It serves only
    `inference_all_reduce` (tensor-parallel inference), never ZeRO-3 training, yet its first load
    compiles it for about a minute (~/.cache/torch_extensions), and again whenever the `ninja` on
    PATH changes (the venv's and the system's record different hashes). Marking it incompatible
    before `init_distributed` skips the load, and the probe of every other op's compiler with it."""
    import deepspeed.ops

    vars(deepspeed.ops).setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False


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
        skip_shared_memory_op()
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
