"""`sweep check-transfer`: the coordinate check of μP (Yang et al., "Tensor Programs V", Fig. 5).

Trains the spec's base rung at several widths (depth and head dim fixed, MLP ratio kept,
encoder and decoder scaled together) for a few AdamW steps on the same synthetic clips,
then measures each kind of layer's output size (RMS of its coordinates) against width.
In μP the sizes stay put as width grows (log-log slope near 0), so an LR tuned at one width
transfers; in the standard parametrisation at a fixed LR, Adam's updates grow the hidden
activations with width (slopes well above 0). Plain PyTorch in one process: a diagnostic,
not a training run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from rich.table import Table

from contracts.shapes import MAEConfig, MupBase, ViTShape
from contracts.spec import SpecError, SweepSpec
from data4d.stream import PretrainStream
from data4d.world import SyntheticWorld
from models.mae import VideoMAE, normalize_video, param_groups, random_masking

# Layer kinds whose output coordinates are measured (module name patterns, see `_kind`).
KINDS = ("patch_embed", "attn", "mlp", "encoder_out", "decoder_embed", "decoder_head")


@dataclass
class CoordRow:
    parametrization: str  # "sp" | "mup"
    kind: str
    rms: dict[int, float]  # width -> RMS of the layer's output coordinates after the last step
    slope: float  # d log(rms) / d log(width), least squares


def widened(shape: ViTShape, width: int, head_dim: int) -> ViTShape:
    """`shape` at another width: head dim fixed (heads grow), MLP ratio kept."""
    return ViTShape(
        width=width,
        depth=shape.depth,
        mlp=round(shape.mlp * width / shape.width),
        heads=max(1, width // head_dim),
    )


def _kind(name: str) -> str | None:
    if name == "encoder.patch_embed":
        return "patch_embed"
    if name.endswith(".attn") and name.startswith("encoder."):
        return "attn"
    if name.endswith(".mlp") and name.startswith("encoder."):
        return "mlp"
    if name.startswith("encoder.blocks.") and name.count(".") == 2:
        return "encoder_out"  # every block's output; the last one's is kept
    return {"decoder.embed": "decoder_embed", "decoder.head": "decoder_head"}.get(name)


def train_briefly(
    cfg: MAEConfig, spec: SweepSpec, lr: float, steps: int, batch: int, warmup: int = 0, seed: int = 0
) -> VideoMAE:
    """`steps` AdamW steps (the spec's betas and weight decay, the model's μP groups, a linear warmup,
    then a constant LR) on the spec's pretraining stream, in this process; `seed` draws the init,
    the clips and the masks."""
    torch.manual_seed(seed)
    model = VideoMAE(cfg)
    o = spec.pretraining.optimizer
    opt = torch.optim.AdamW(param_groups(model, lr, o.weight_decay), lr=lr, betas=o.betas)
    base = [g["lr"] for g in opt.param_groups]
    stream = PretrainStream(spec.data, seed=seed, per_rank_batch=batch)
    for step in range(steps):
        for g, lr0 in zip(opt.param_groups, base, strict=True):
            g["lr"] = lr0 * min(1.0, (step + 1) / warmup) if warmup else lr0
        vis, msk = random_masking(batch, cfg, torch.Generator().manual_seed(seed * 1_000_003 + step))
        loss = model(normalize_video(stream.batch(step)), vis, msk)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def held_out_loss(model: VideoMAE, spec: SweepSpec, clips: int = 64) -> float:
    """The MAE loss on the world's first `clips` val clips, with masks fixed by a seed."""
    d = spec.data
    world = SyntheticWorld(
        frames=d.frames,
        size=d.resolution,
        seed=0,
        split="val",
        objects=d.world.objects,
        points=d.world.points,
        focal=d.world.focal,
    )
    video = torch.from_numpy(np.stack([world[i]["video"] for i in range(clips)]))
    vis, msk = random_masking(clips, model.cfg, torch.Generator().manual_seed(12345))
    model.eval()
    return float(model(normalize_video(video), vis, msk))


def _train_and_measure(
    cfg: MAEConfig, spec: SweepSpec, lr: float, steps: int, batch: int, seed: int
) -> dict[str, float]:
    model = train_briefly(cfg, spec, lr, steps, batch, seed=seed)
    stream = PretrainStream(spec.data, seed=seed, per_rank_batch=batch)
    seen: dict[str, list[float]] = {}

    def hook(kind):
        def record(_module, _inputs, output):
            seen.setdefault(kind, []).append(output.detach().float().pow(2).mean().sqrt().item())

        return record

    handles = [m.register_forward_hook(hook(k)) for n, m in model.named_modules() if (k := _kind(n))]
    with torch.no_grad():  # measured on the next batch, in train mode as the steps were
        vis, msk = random_masking(batch, cfg, torch.Generator().manual_seed(seed * 1_000_003 + steps))
        model(normalize_video(stream.batch(steps)), vis, msk)
    for h in handles:
        h.remove()
    # Mean over blocks for attn/mlp; the residual stream after the last block for encoder_out.
    return {k: (v[-1] if k == "encoder_out" else float(np.mean(v))) for k, v in seen.items()}


def coordinate_check(
    spec: SweepSpec,
    widths: list[int],
    steps: int = 10,
    lr: float | None = None,
    batch: int = 8,
    seeds: int = 3,
    log=print,
) -> list[CoordRow]:
    """Rows for both parametrisations at the same base LR (the spec's unless `lr` is given). Each size
    is the geometric mean over `seeds` runs (init, clips and masks): one run's sizes move by ~10%
    from seed to seed, as much as a slope of 0.1 moves them over a doubling of width."""
    base = spec.base_config().model
    lr = lr or spec.pretraining.optimizer.lr
    enc_head = base.encoder.width // base.encoder.heads
    dec_head = base.decoder.width // base.decoder.heads
    base = replace(base, mup=None)
    scale = {w: w / base.encoder.width for w in widths}
    rows = []
    for par in ("sp", "mup"):
        sizes: dict[int, dict[str, float]] = {}
        for w in widths:
            dec_w = max(dec_head, round(base.decoder.width * scale[w] / dec_head) * dec_head)
            cfg = replace(
                base,
                encoder=widened(base.encoder, w, enc_head),
                decoder=widened(base.decoder, dec_w, dec_head),
                mup=MupBase(base.encoder, base.decoder) if par == "mup" else None,
            )
            log(f"check-transfer: {par} width {w} ({steps} steps at lr {lr:g}, {seeds} seeds)")
            runs = [_train_and_measure(cfg, spec, lr, steps, batch, seed) for seed in range(seeds)]
            sizes[w] = {k: float(np.exp(np.mean([np.log(r[k]) for r in runs]))) for k in runs[0]}
        x = np.log(widths)
        for kind in KINDS:
            rms = {w: sizes[w][kind] for w in widths}
            slope = float(np.polyfit(x, np.log([rms[w] for w in widths]), 1)[0])
            rows.append(CoordRow(par, kind, rms, slope if math.isfinite(slope) else float("nan")))
    return rows


# ------------------------------------------------------------------ `sweep check-transfer`


@dataclass
class TransferCheck:
    """The coordinate check of one spec: its rows and how `sweep check-transfer` shows them."""

    sweep: str
    base_width: int
    widths: list[int]
    steps: int
    rows: list[CoordRow]

    def table(self) -> Table:
        t = Table(
            title=f"coordinate check of '{self.sweep}' from width {self.base_width}: "
            f"output RMS after {self.steps} steps"
        )
        t.add_column("layer")
        for par in ("standard", "μP"):
            for w in self.widths:
                t.add_column(f"{par} w{w}", justify="right")
            t.add_column(f"{par} slope", justify="right")
        for kind in {r.kind: None for r in self.rows}:
            cells = []
            for par in ("sp", "mup"):
                r = next(r for r in self.rows if (r.parametrization, r.kind) == (par, kind))
                cells += [f"{r.rms[w]:.3f}" for w in self.widths] + [f"{r.slope:+.2f}"]
            t.add_row(kind, *cells)
        return t

    def verdict(self) -> str:
        worst = {p: max(abs(r.slope) for r in self.rows if r.parametrization == p) for p in ("sp", "mup")}
        return (
            f"largest |slope|: μP {worst['mup']:.2f}, standard {worst['sp']:.2f}. Near 0 means activations "
            f"do not grow with width, so an LR tuned on a narrow rung transfers to wide ones."
        )


def check_transfer(
    spec: SweepSpec, widths: str | None, steps: int, seeds: int, lr: float | None, log=print
) -> TransferCheck:
    """`widths` as the user wrote them (comma-separated; default the base rung's x1, x2, x4, x8)."""
    base_width = spec.base_config().model.encoder.width
    try:
        ws = [int(w) for w in widths.split(",")] if widths else [base_width * k for k in (1, 2, 4, 8)]
    except ValueError:
        raise SpecError(f"--widths must be comma-separated integers, got {widths!r}") from None
    if len(ws) < 3 or min(ws) < 1:
        raise SpecError(f"--widths needs 3 or more positive widths for a slope, got {widths!r}")
    rows = coordinate_check(spec, ws, steps=steps, lr=lr, seeds=seeds, log=log)
    return TransferCheck(spec.name, base_width, ws, steps, rows)
