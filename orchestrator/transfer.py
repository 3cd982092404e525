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

from contracts.shapes import MAEConfig, MupBase, ViTShape
from contracts.spec import SweepSpec, rung_name
from data4d.stream import PretrainStream
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


def _train_and_measure(
    cfg: MAEConfig, spec: SweepSpec, lr: float, steps: int, batch: int
) -> dict[str, float]:
    torch.manual_seed(0)
    model = VideoMAE(cfg)
    o = spec.pretraining.optimizer
    opt = torch.optim.AdamW(param_groups(model, lr, o.weight_decay), lr=lr, betas=o.betas)
    stream = PretrainStream(spec.data, seed=0, per_rank_batch=batch)
    seen: dict[str, list[float]] = {}

    def hook(kind):
        def record(_module, _inputs, output):
            seen.setdefault(kind, []).append(output.detach().float().pow(2).mean().sqrt().item())

        return record

    handles = [m.register_forward_hook(hook(k)) for n, m in model.named_modules() if (k := _kind(n))]
    for step in range(steps + 1):  # the last pass only measures
        seen.clear()
        vis, msk = random_masking(batch, cfg, torch.Generator().manual_seed(step))
        loss = model(normalize_video(stream.batch(step)), vis, msk)
        if step < steps:
            opt.zero_grad()
            loss.backward()
            opt.step()
    for h in handles:
        h.remove()
    # Mean over blocks for attn/mlp; the residual stream after the last block for encoder_out.
    return {k: (v[-1] if k == "encoder_out" else float(np.mean(v))) for k, v in seen.items()}


def coordinate_check(
    spec: SweepSpec, widths: list[int], steps: int = 10, lr: float | None = None, batch: int = 8, log=print
) -> list[CoordRow]:
    """Rows for both parametrisations at the same base LR (the spec's unless `lr` is given)."""
    base = spec.rung(rung_name(spec.base_rung())).model
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
            log(f"check-transfer: {par} width {w} ({steps} steps at lr {lr:g})")
            sizes[w] = _train_and_measure(cfg, spec, lr, steps, batch)
        x = np.log(widths)
        for kind in KINDS:
            rms = {w: sizes[w][kind] for w in widths}
            slope = float(np.polyfit(x, np.log([rms[w] for w in widths]), 1)[0])
            rows.append(CoordRow(par, kind, rms, slope if math.isfinite(slope) else float("nan")))
    return rows
