"""The bill of a ladder before it runs: parameters, FLOPs, memory and GPU-hours per rung."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rich.table import Table

from contracts.cost import decoder_params, encoder_params, flops_per_clip, zero3_memory_per_gpu
from contracts.spec import RungConfig, SweepSpec, human_count, lr_tag

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
    lr: float  # the base LR the rung trains with (under μP, its hidden matrices scale it by base/width)
    parametrization: str  # "sp" (standard) or "mup"
    warmup_steps: int
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
        lr=r.optimizer.lr,
        parametrization="mup" if m.mup else "sp",
        warmup_steps=r.schedule.warmup_steps,
        gpus=r.gpus,
        workers=r.workers,
        mem_per_gpu_bytes=mem,
        gpu_hours=gpu_hours,
        fits=(mem <= gpu_memory_bytes) if r.gpus else True,
    )


def plan_sweep(
    spec: SweepSpec, mfu: float = 0.4, peak_flops: float = H100_BF16_PEAK, gpu_memory_gib: float = 80
) -> list[RungPlan]:
    """Every rung's bill. `mfu` is the assumed model FLOPs utilisation behind the GPU-hours."""
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


# ------------------------------------------------------------------ `sweep plan`'s output

COLUMNS = (
    "rung",
    "shape w/d/mlp/h",
    "enc params",
    "dec params",
    "FLOPs/clip",
    "train FLOPs",
    "steps x batch",
    "LR",
    "warmup",
    "GPUs",
    "mem/GPU",
    "GPU-h",
)


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def plan_table(spec: SweepSpec, plans: list[RungPlan]) -> Table:
    """One row per rung and a total: what `sweep plan` prints."""
    t = Table(title=f"sweep '{spec.name}': {len(plans)} rungs")
    for col in COLUMNS:
        t.add_column(col, justify="right")
    for p in plans:
        t.add_row(
            p.key,
            p.shape,
            human_count(p.encoder_params),
            human_count(p.decoder_params),
            f"{p.flops_per_clip:.2e}",
            f"{p.train_flops:.2e}",
            f"{p.steps} x {p.batch_size}",
            lr_tag(p.lr) + (" μP" if p.parametrization == "mup" else ""),
            str(p.warmup_steps),
            str(p.gpus) if p.gpus else f"cpu x{p.workers}",
            gib(p.mem_per_gpu_bytes) + ("" if p.fits else " !"),
            f"{p.gpu_hours:,.0f}" if p.gpus else "-",
        )
    t.add_section()
    gpu_hours = sum(p.gpu_hours for p in plans)
    total_flops = f"{sum(p.train_flops for p in plans):.2e}"
    t.add_row("total", "", "", "", "", total_flops, *[""] * 5, f"{gpu_hours:,.0f}" if gpu_hours else "-")
    return t


def scaling_note(spec: SweepSpec) -> str | None:
    """How the rungs' LR, warmup and batch were scaled from the base rung, or None if they were not."""
    sc = spec.pretraining.scaling
    if not sc.active:
        return None
    base = spec.base_rung()
    rules = ", ".join(
        f"{k} {getattr(sc, k).rule}"
        + (f" {getattr(sc, k).exponent:g}" if getattr(sc, k).exponent is not None else "")
        for k in ("lr", "warmup", "batch")
    )
    mup = " (μP: hidden matrices' LR x base/width inside the model)" if sc.lr.rule == "mup" else ""
    return f"Scaled from rung {base.name or base.size or 'ladder[0]'}: {rules}{mup}."


def memory_warnings(plans: list[RungPlan], gpu_memory_gib: float) -> list[str]:
    """One line per rung that would not fit in a GPU's memory, with what to change."""
    return [
        f"rung {p.name} needs ~{gib(p.mem_per_gpu_bytes)} per GPU on {p.gpus} GPUs, more than "
        f"{gpu_memory_gib:g} GiB: give it more GPUs, a smaller micro_batch_size, or activation_checkpointing"
        for p in plans
        if not p.fits
    ]
