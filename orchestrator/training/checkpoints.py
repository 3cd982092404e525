"""Saving and publishing a checkpoint: every rank's ZeRO shards, rank 0's export and seal, the store upload.

The checkpoint format (manifest, seal, verify, find): orchestrator.checkpoint.

On a store (contracts.storage) each rank writes its ZeRO shards to a local cache dir, on the step,
and uploads them in a background thread (`Publish`) while training goes on; rank 0's thread also
waits for every rank's upload, builds the export from the shards and writes the manifest last. The
next checkpoint first waits for the previous one's upload: that wait is logged as
train/ckpt_wait_s. An upload that kept failing raises there, naming the bucket and key; the
checkpoints before it are untouched. Resuming (training.engine), each rank downloads only its own
shards of the newest checkpoint every rank could verify.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from contracts.layout import DS_TAG, EXPORT, PROBE
from contracts.spec import RungConfig
from contracts.storage import cache_path, is_remote, where
from models.export import save_encoder
from models.mae import normalize_video
from orchestrator import checkpoint as ckpt
from orchestrator.training.engine import Worker


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
