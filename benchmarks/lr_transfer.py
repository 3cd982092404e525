"""Does the best learning rate transfer across width? An LR sweep at two micro widths, standard
parametrisation against μP, in plain PyTorch (one process, one thread).

    python benchmarks/lr_transfer.py                       # widths 32 and 256, 6 LRs, 150 steps
    python benchmarks/lr_transfer.py --widths 32,128 --steps 60

For each (parametrisation, width, LR) it trains the same micro MAE (depth 3, head dim 16, decoder
scaled with the encoder) on 8-frame 32x32 synthetic clips with a warmup then a constant LR, and
prints the held-out loss (64 val clips, fixed masks) and the best LR per width. Under μP the
best LR should stay on the same grid point as width grows; under the standard one it moves down.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from contracts.shapes import MAEConfig, MupBase, ViTShape  # noqa: E402
from contracts.spec import SweepSpec  # noqa: E402
from orchestrator.transfer import held_out_loss, train_briefly, widened  # noqa: E402

SPEC = SweepSpec.model_validate(
    {
        "name": "lr-transfer",
        "data": {"frames": 8, "resolution": 32, "tubelet": [2, 8, 8]},
        "pretraining": {"optimizer": {"lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.95]}},
        "ladder": [{"name": "base", "width": 32, "depth": 3, "mlp": 128, "heads": 2}],
    }
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="32,256")
    p.add_argument("--lrs", default="2e-3,4e-3,8e-3,1.6e-2,3.2e-2,6.4e-2")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(1)
    widths, lrs = [int(w) for w in args.widths.split(",")], [float(x) for x in args.lrs.split(",")]
    base = MAEConfig(
        encoder=ViTShape(32, 3, 128, 2),
        decoder=ViTShape(32, 1, 128, 2),
        frames=8,
        size=32,
        tubelet=(2, 8, 8),
        mask_ratio=0.75,
    )
    best: dict[tuple[str, int], tuple[float, float]] = {}
    t0 = time.time()
    print(f"{'param':5} {'width':>5} " + " ".join(f"{lr:>9.2g}" for lr in lrs) + "   best LR")
    for par in ("sp", "mup"):
        for w in widths:
            cfg = replace(
                base,
                encoder=widened(base.encoder, w, 16),
                decoder=widened(base.decoder, w, 16),
                mup=MupBase(base.encoder, base.decoder) if par == "mup" else None,
            )
            losses = []
            for lr in lrs:
                model = train_briefly(cfg, SPEC, lr, args.steps, args.batch, warmup=args.steps // 10)
                loss = held_out_loss(model, SPEC)
                losses.append(loss if loss == loss else float("inf"))  # a diverged run is never the best
            i = min(range(len(lrs)), key=losses.__getitem__)
            best[(par, w)] = (lrs[i], losses[i])
            print(f"{par:5} {w:>5} " + " ".join(f"{v:>9.4f}" for v in losses) + f"   {lrs[i]:g}", flush=True)
    for par in ("sp", "mup"):
        moved = len({best[(par, w)][0] for w in widths}) > 1
        print(
            f"{par}: best LR per width {[best[(par, w)][0] for w in widths]} -> "
            f"{'moves with width' if moved else 'stays on the same grid point'}"
        )
    print(f"({time.time() - t0:.0f} s, {args.steps} steps, batch {args.batch})")


if __name__ == "__main__":
    main()
