"""How long each piece of a sweep takes on a paper cluster, from the rung's config alone
(contracts.cost) or, with --calibrate, from a finished sweep's records (orchestrator.simulate.calibrate).

A rung's step takes the longer of its compute (training FLOPs at an MFU over its GPUs, less
`multi_node_efficiency` when it spans nodes) and its data (clips its nodes' CPU cores decode per
second, at the per-core rates docs/performance.md measures). A checkpoint writes 16 bytes per
parameter (ZeRO-3 with AdamW: bf16 params and grads, fp32 master, Adam m and v) plus a 4-byte
export of the final model, over each node's storage bandwidth in parallel; a restart reads the 16
bytes back. An eval computes the frozen encoder's features over its clips (finetune: trains the
encoder too) and the readout's epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contracts.cost import encoder_inference_flops, flops_per_clip
from contracts.spec import RungConfig, SweepSpec
from orchestrator.simulate.cluster import CPU_CORE_FLOPS, Cluster

# Clips one CPU core decodes per second at the 4DS clip (16 x 224 x 224), `benchmarks/decode_speed.py`
# (docs/performance.md, 2026-11-21): from 640x360 5 s videos, or from pre-cut 340x256 18-frame clips.
DECODE_CLIPS_PER_CORE_S = {"long": 13.4, "clips": 40.5}
REFERENCE_CLIP_PIXELS = 16 * 224 * 224
STATE_BYTES_PER_PARAM = 16
EXPORT_BYTES_PER_PARAM = 4


@dataclass(frozen=True)
class RungCost:
    startup_s: float
    step_s: float
    compute_step_s: float
    data_step_s: float  # 0: not limited by decoding
    save_s: float  # one checkpoint
    final_extra_s: float  # the final checkpoint's export, and the worker group's teardown
    restore_s: float

    @property
    def data_bound(self) -> bool:
        return self.data_step_s > self.compute_step_s


@dataclass(frozen=True)
class Assumptions:
    mfu: float = 0.4
    # auto: a spec reading real video decodes pre-cut clips, synthetic data is not decoded;
    # clips | long: decode at that rate whatever the source (what would real video cost?); none.
    decode: str = "auto"
    mfu_per_rung: dict[str, float] | None = None  # from a `sweep bench --json` file


def nodes_spanned(cluster: Cluster, gpus: int) -> int:
    return max(1, math.ceil(gpus / cluster.gpus_per_node)) if not cluster.cpu_only else 1


def rung_cost(rung: RungConfig, cluster: Cluster, assume: Assumptions, gpus: int | None = None) -> RungCost:
    """Analytic durations of `rung` on `cluster` with `gpus` GPUs (default: its own)."""
    gpus = rung.gpus if gpus is None else gpus
    mfu = (assume.mfu_per_rung or {}).get(rung.name, assume.mfu)
    nodes = nodes_spanned(cluster, gpus)
    flops = flops_per_clip(rung.model).train * rung.batch_size
    if cluster.cpu_only:
        compute = flops / (rung.workers * rung.cpus_per_worker * cluster.peak_flops * mfu)
        cores = rung.workers * rung.cpus_per_worker
    else:
        efficiency = cluster.multi_node_efficiency if nodes > 1 else 1.0
        compute = flops / (gpus * cluster.peak_flops * mfu * efficiency)
        cores = gpus * cluster.cores_per_gpu
    data = 0.0
    decode = (
        ("none" if rung.data.source == "synthetic" else "clips") if assume.decode == "auto" else assume.decode
    )
    if decode != "none":
        pixels = rung.data.frames * rung.data.resolution**2
        per_core = DECODE_CLIPS_PER_CORE_S[decode] * REFERENCE_CLIP_PIXELS / pixels
        data = rung.batch_size / (cores * per_core)
    bandwidth = cluster.storage_gb_s_per_node * 1e9 * nodes
    state = STATE_BYTES_PER_PARAM * rung.total_params / bandwidth
    export = EXPORT_BYTES_PER_PARAM * rung.total_params / bandwidth
    return RungCost(
        startup_s=cluster.startup_s,
        step_s=max(compute, data),
        compute_step_s=compute,
        data_step_s=data,
        save_s=state,
        final_extra_s=export,
        restore_s=state,
    )


def eval_seconds(
    spec: SweepSpec, rung: RungConfig, task: str, mode: str, cluster: Cluster, mfu: float
) -> float:
    """One eval job: features of every clip it reads (finetune: encoder forward+backward on the
    training clips every epoch) and the readout's epochs (a one-block attention readout)."""
    ro = spec.evals.readout_for(task)
    enc = encoder_inference_flops(rung.model)
    clips = ro.train_clips + ro.val_clips + ro.test_clips
    readout_block = 12 * ro.width**2 * rung.model.num_tokens  # one transformer block's MACs per clip
    readout = 6 * readout_block * ro.train_clips * ro.epochs + 2 * readout_block * (
        ro.val_clips + ro.test_clips
    )
    if mode == "finetune":
        work = 3 * enc * ro.train_clips * ro.epochs + enc * (ro.val_clips + ro.test_clips) * ro.epochs
    else:
        work = enc * clips
    if spec.evals.gpus and not cluster.cpu_only:
        units, peak = spec.evals.gpus, cluster.peak_flops
    else:  # on CPU cores, at the CPU's rate
        units, peak = spec.evals.cpus, CPU_CORE_FLOPS
    return cluster.eval_startup_s + (work + readout) / (units * peak * mfu)
