"""Pretraining one rung: DeepSpeed ZeRO-3 inside a Ray Train TorchTrainer.

Ray Train's experiment directory *is* the rung's run directory
(`storage_path=runs/<sweep>`, `name=<rung>-<hash6>`): checkpoints are sealed there
by rank 0 and registered with Ray without a copy (NO_UPLOAD). A worker failure is
restarted by Ray Train's FailureConfig from `ray.train.get_checkpoint()`; starting
the rung again later resumes the same way. Batches and masks are pure functions
of (seed, step, rank), so a resumed run logs the same losses as one never stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from contracts.cost import flops_per_clip
from contracts.layout import DS_TAG, EXPORT, PROBE, RAY_SNAPSHOT, RungPaths, read_json, write_json
from contracts.spec import RungConfig
from data4d.stream import PretrainStream
from models.export import save_encoder
from models.mae import VideoMAE, normalize_video, random_masking
from orchestrator import checkpoint as ckpt

# Dense bf16 peaks (FLOP/s) for MFU, by device name fragment.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


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
    """Multiplier of the base LR at optimiser step `step` (0-based): linear warmup, then cosine or constant."""
    s = rung.schedule
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.kind == "constant":
        return 1.0
    progress = min(1.0, (step - s.warmup_steps) / max(1, rung.steps - s.warmup_steps))
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def mask_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 10_007 + rank


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, position embeddings and the mask token."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        shape = getattr(p, "ds_shape", p.shape)  # partitioned params report their full shape here
        (no_decay if len(shape) < 2 or "pos_embed" in name or "mask_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


SYSTEM_EVERY_S = 10.0


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


# ------------------------------------------------------------------ the worker


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import deepspeed
    import ray
    import ray.train as train
    import torch.distributed as dist

    rung = RungConfig.from_dict(config["rung"])
    paths = RungPaths(Path(config["run_dir"]))
    tracker, run_id = config.get("tracker"), config.get("run_id")
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    gpu = rung.gpus > 0
    device = torch.device("cuda", ctx.get_local_rank()) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(rung.cpus_per_worker)
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")  # reuses the group Ray Train set up

    # Build: model on every rank, partitioned as it is created; optimiser; LR schedule.
    ds_config = deepspeed_config(rung, world)
    torch.manual_seed(rung.seed)
    with deepspeed.zero.Init(enabled=rung.zero_stage == 3, config_dict_or_path=ds_config):
        model = VideoMAE(rung.model)
    model.encoder.activation_checkpointing = rung.activation_checkpointing
    o = rung.optimizer
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, fused=gpu)
    schedule = partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=partial(lr_factor, rung=rung))
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config
    )

    # Resume from Ray's latest registered checkpoint, or an older one if it is corrupt.
    registered = train.get_checkpoint()
    found, warnings = ckpt.latest_valid(paths.root, start_from=Path(registered.path) if registered else None)
    start = 0
    if found is not None:
        engine.load_checkpoint(str(found.path), tag=DS_TAG, load_module_strict=True)
        start = found.step
    if rank == 0:
        for w in warnings:
            print(f"WARNING [{rung.key}] {w}", flush=True)
        if found is not None:
            print(
                f"[{rung.key}] resuming from {found.path}" + ("" if registered else " (found on disk)"),
                flush=True,
            )
        write_json(paths.resume, {"step": start, "warnings": warnings, "time": time.time()})

    # Who ran where, and how much of the model each rank holds (ZeRO-3 partitioning).
    local = sum(
        p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in engine.module.parameters()
    )
    write_json(
        paths.worker(rank),
        {
            "rank": rank,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": os.uname().nodename,
            "local_param_elements": local,
            "total_param_elements": rung.total_params,
            "start_step": start,
            "time": time.time(),
        },
    )

    per_rank = rung.batch_size // world
    micro = rung.micro_batch_size
    stream = PretrainStream(rung.data, rung.seed, per_rank, rank, world)
    flops_step = flops_per_clip(rung.model).train * rung.batch_size
    peak = peak_flops(device)
    failure = None
    last_metrics: dict = {}
    last_system = 0.0
    system_metrics(device)  # psutil's CPU figure is "since the last call": start the clock
    dtype = torch.bfloat16 if rung.precision == "bf16" else torch.float32  # what the engine's params hold
    # On GPU, render the next batches in a background thread while this one trains; on CPU
    # workers that thread would only compete with compute for the same cores.
    batches = stream.iter_from(start) if gpu else ((s, stream.batch(s)) for s in range(start, rung.steps))
    engine.train()
    t0 = time.perf_counter()
    for step, clips in batches:  # clips: (per_rank, T, S, S, 3) uint8, a pure function of (seed, step, rank)
        if step >= rung.steps:
            break
        visible, masked = random_masking(
            per_rank, rung.model, torch.Generator().manual_seed(mask_seed(rung.seed, step, rank))
        )
        lr = scheduler.get_last_lr()[0]
        loss_sum = torch.zeros((), device=device)
        for i in range(0, per_rank, micro):
            video = normalize_video(clips[i : i + micro].to(device, non_blocking=True)).to(dtype)
            loss = engine(
                video,
                visible[i : i + micro].to(device, non_blocking=True),
                masked[i : i + micro].to(device, non_blocking=True),
            )
            engine.backward(loss)
            engine.step()  # DeepSpeed steps the optimiser only at the accumulation boundary
            loss_sum += loss.detach().float()
        dist.all_reduce(loss_sum)
        loss_value = loss_sum.item() / (world * (per_rank // micro))
        dt = time.perf_counter() - t0  # this step's data + compute; checkpoint time is not counted
        grad_norm = engine.get_global_grad_norm()
        done = step + 1
        metrics = {
            "train/loss": loss_value,
            "train/lr": lr,
            "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "train/clips_per_s": rung.batch_size / dt,
            "train/tokens_per_s": rung.batch_size * rung.model.num_tokens / dt,
            "train/tflops": flops_step / dt / 1e12,
        }
        if peak:
            metrics["train/mfu"] = flops_step / dt / (peak * world)
        if not math.isfinite(loss_value):
            failure = f"loss is {loss_value} at step {done}: training diverged (lower the learning rate or add warmup)"
            metrics.pop("train/loss")
        if rank == 0:
            if tracker is not None:
                if time.monotonic() - last_system >= SYSTEM_EVERY_S or done == rung.steps:
                    tracker.log_metrics.remote(run_id, system_metrics(device), done)
                    last_system = time.monotonic()
                tracker.log_metrics.remote(run_id, metrics, done)
            with open(paths.metrics, "a") as f:
                f.write(
                    json.dumps({"step": done, **{k: v for k, v in metrics.items() if math.isfinite(v)}})
                    + "\n"
                )
            write_json(
                paths.progress,
                {
                    "step": done,
                    "total": rung.steps,
                    "loss": loss_value,
                    "clips_per_s": metrics["train/clips_per_s"],
                    "time": time.time(),
                },
            )
        last_metrics = {"step": done, "loss": loss_value}
        if failure:
            break
        if done % rung.checkpoint_interval == 0 or done == rung.steps:
            _save(engine, paths, done, rung, rank, world, last_metrics, final=done == rung.steps)
        t0 = time.perf_counter()

    if failure:
        if rank == 0:
            print(f"ERROR [{rung.key}] {failure}", flush=True)
            write_json(paths.failure, {"reason": failure, "step": last_metrics["step"]})
        # Ends the run without an exception: a divergence would only repeat if Ray retried it.
        train.report(last_metrics)


def _save(
    engine, paths: RungPaths, step: int, rung: RungConfig, rank: int, world: int, metrics: dict, final: bool
) -> None:
    """Every rank writes its ZeRO shards into a staging dir; rank 0 exports the encoder, seals, registers."""
    import ray.train as train
    import torch.distributed as dist
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from ray.train import Checkpoint, CheckpointUploadMode
    from safetensors.torch import save_file

    staging, final_dir = paths.staging(step), paths.checkpoint(step)
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(staging), tag=DS_TAG)
    probe = None
    if final:
        # The engine's own features for one fixed clip, kept to check the export against.
        gen = torch.Generator().manual_seed(rung.seed)
        video = torch.randint(
            0,
            256,
            (1, rung.model.frames, rung.model.size, rung.model.size, 3),
            generator=gen,
            dtype=torch.uint8,
        )
        every = torch.arange(rung.model.num_tokens)[None]
        engine.eval()
        with torch.no_grad():
            x = normalize_video(video).to(engine.device)
            feats = engine.module.encoder(
                x.to(next(iter(engine.module.parameters())).dtype), every.to(engine.device)
            )
        engine.train()
        probe = {"video": video, "features": feats.float().cpu()}
    dist.barrier()
    if rank == 0:
        state = get_fp32_state_dict_from_zero_checkpoint(str(staging), tag=DS_TAG)
        encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        save_encoder(encoder, rung.to_dict(), staging / EXPORT)
        if probe is not None:
            save_file(probe, str(staging / EXPORT / PROBE))
        ckpt.seal(staging, final_dir, step, rung.key, extra={"world_size": world, "time": time.time()})
    dist.barrier()
    train.report(
        metrics,
        checkpoint=Checkpoint.from_directory(str(final_dir)) if rank == 0 else None,
        checkpoint_dir_name=f"checkpoints/step_{step:08d}",
        checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
    )


# ------------------------------------------------------------------ the driver side


@dataclass
class RungOutcome:
    key: str
    ok: bool
    step: int
    reason: str | None = None


def reconcile_ray_snapshot(paths: RungPaths) -> str | None:
    """Ray Train refuses to start when its snapshot names a checkpoint that is gone (deleted,
    or lost with a disk). Our manifests are the record that matters: set the snapshot
    aside and let the worker resume from the newest valid checkpoint on disk."""
    path = paths.ray_snapshot
    try:
        snap = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        snap = {"checkpoint_results": [{"checkpoint_dir_name": "(unreadable snapshot)"}]}
    missing = [
        c["checkpoint_dir_name"]
        for c in snap.get("checkpoint_results", [])
        if not (paths.root / c["checkpoint_dir_name"]).is_dir()
    ]
    if not missing:
        return None
    path.rename(path.with_name(f"{RAY_SNAPSHOT}.stale-{int(time.time())}"))
    return f"Ray's run snapshot names missing checkpoints ({', '.join(missing)}); resuming from the run directory instead"


def fit_rung(
    rung: RungConfig, runs_root: Path, tracker=None, run_id: str | None = None, max_failures: int = 2
) -> RungOutcome:
    """Train (or resume) one rung to completion with Ray Train. Ray must be initialised."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    paths = RungPaths.for_rung(rung, runs_root)
    run_dir = paths.root
    run_dir.mkdir(parents=True, exist_ok=True)
    paths.failure.unlink(missing_ok=True)
    warning = reconcile_ray_snapshot(paths)
    if warning:
        print(f"WARNING [{rung.key}] {warning}", flush=True)
    gpu = rung.gpus > 0
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "rung": rung.to_dict(),
            "run_dir": str(run_dir.resolve()),
            "tracker": tracker,
            "run_id": run_id,
        },
        scaling_config=ScalingConfig(
            num_workers=rung.workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": rung.cpus_per_worker, **({"GPU": 1} if gpu else {})},
        ),
        run_config=RunConfig(
            name=rung.key,
            storage_path=str(run_dir.parent.resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray Train gave up after max_failures
        cause = getattr(e, "__cause__", None) or e
        return RungOutcome(
            rung.key, False, _last_step(paths), f"training failed: {type(cause).__name__}: {cause}"
        )
    del result  # outcomes are read from the run dir, where rank 0 records a divergence
    failure = (read_failure(paths) or {}).get("reason")
    if failure:
        return RungOutcome(rung.key, False, _last_step(paths), failure)
    return RungOutcome(rung.key, True, _last_step(paths))


def read_failure(paths: RungPaths) -> dict | None:
    return read_json(paths.failure)


def _last_step(paths: RungPaths) -> int:
    return (read_json(paths.progress) or {}).get("step", 0)
