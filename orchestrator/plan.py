"""The bill of a ladder before it runs: parameters, FLOPs, memory and GPU-hours per rung."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from contracts.cost import decoder_params, encoder_params, flops_per_clip, zero3_memory_per_gpu
from contracts.spec import RungConfig, SweepSpec

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM datasheet


@dataclass
class RungPlan:
    name: str
    key: str
    shape: str
    encoder_params: int
    decoder_params: int
    params: int  # encoder + decoder
    flops_per_clip: int
    train_flops: int
    steps: int
    batch_size: int
    gpus: int
    workers: int
    mem_per_gpu_bytes: int
    gpu_hours: float
    fits: bool


def plan_rung(r: RungConfig, mfu: float, peak_flops: float, gpu_memory_bytes: float) -> RungPlan:
    m = r.model
    enc, dec = encoder_params(m), decoder_params(m)
    mem = zero3_memory_per_gpu(
        m,
        r.workers,
        r.micro_batch_size,
        bf16=r.precision == "bf16",
        activation_checkpointing=r.activation_checkpointing,
    ).total
    train_flops = flops_per_clip(m).train * r.batch_size * r.steps
    gpu_hours = train_flops / (peak_flops * mfu) / 3600 if r.gpus else 0.0
    e = m.encoder
    return RungPlan(
        name=r.name,
        key=r.key,
        shape=f"{e.width}/{e.depth}/{e.mlp}/{e.heads}",
        encoder_params=enc,
        decoder_params=dec,
        params=enc + dec,
        flops_per_clip=flops_per_clip(m).train,
        train_flops=train_flops,
        steps=r.steps,
        batch_size=r.batch_size,
        gpus=r.gpus,
        workers=r.workers,
        mem_per_gpu_bytes=mem,
        gpu_hours=gpu_hours,
        fits=(mem <= gpu_memory_bytes) if r.gpus else True,
    )


def plan_sweep(
    spec: SweepSpec, mfu: float = 0.4, peak_flops: float = H100_BF16_PEAK, gpu_memory_gib: float = 80
) -> list[RungPlan]:
    return [plan_rung(r, mfu, peak_flops, gpu_memory_gib * 2**30) for r in spec.rungs()]


def as_json(plans: list[RungPlan]) -> dict:
    return {
        "rungs": [asdict(p) for p in plans],
        "total": {
            "train_flops": sum(p.train_flops for p in plans),
            "gpu_hours": sum(p.gpu_hours for p in plans),
            "gpus_max": max(p.gpus for p in plans),
        },
    }
