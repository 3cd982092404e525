"""The step loop: `train_loop` on every worker, one optimiser step, the held-out loss, a step's metrics.

Held-out loss. Before every checkpoint, `val_loss` runs the MAE on a fixed held-out set
(`held_out`): the first `pretraining.val_clips` clips of the synthetic world's `val` split,
which pretraining never reads, each with a mask drawn once from VAL_SEED, so every rung of a
sweep (and every pretraining seed) is measured on the same clips and masks. It is logged as
val/loss at the checkpoint's step (MLflow, metrics.jsonl) and sealed into the checkpoint's
manifest. Real sources (video_folder, webdataset) have no val/loss: the stream reads every
clip of them, and holding some out would change which clips existing rungs train on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import takewhile

import torch
import torch.distributed as dist

from contracts.cost import flops_per_clip
from contracts.layout import write_json
from contracts.names import CKPT_WAIT_METRIC, VAL_LOSS_METRIC
from contracts.spec import RungConfig
from data4d.stream import PretrainStream, held_out_clips
from models.mae import normalize_video, random_masking
from orchestrator.training.checkpoints import Publish, save_checkpoint
from orchestrator.training.engine import Worker, build_engine, record_worker, resume, start_worker
from orchestrator.training.sinks import MetricSinks, RunLog
from orchestrator.training.stop import stop_requested

# Dense bf16 peaks (FLOP/s) for MFU, by device name fragment.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
VAL_SEED = 0  # the held-out clips' masks: the same for every rung and every pretraining seed


def mask_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 10_007 + rank


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


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
        if stop_requested(config.get("stop"), worker.rank):  # the driver was interrupted
            if worker.rank == 0:
                print(
                    f"[{rung.key}] stopped after step {done}: the sweep's driver was interrupted", flush=True
                )
            break
        t0 = time.perf_counter()
    if publishing is not None:  # the final checkpoint is sealed before the worker returns
        waited = publishing.wait()
        if worker.rank == 0:
            print(f"[{rung.key}] final checkpoint uploaded (waited {waited:.1f}s)", flush=True)
    if sinks:
        sinks.flush()
