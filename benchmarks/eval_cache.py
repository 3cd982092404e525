"""Frozen readout training with cached features vs recomputing them every epoch.

    python benchmarks/eval_cache.py [--width 256 --depth 6 --task depth --threads 1]

Times `evaluate(..., cache_features=True)` (features computed once per split, then
read from the cache) against `cache_features=False` (the encoder runs on every batch
of every epoch, plus val each epoch and test once), both on a random-init encoder of
the micro ladder's largest shape on 8x32x32 clips with the local ladder's readout
settings. Clips are generated before timing, so only features and readout count.
Prints plain lines; the target ratio is >= 3x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from contracts.spec import Readout, World
from evals.run import SPLITS, evaluate, load_clips
from models.export import save_encoder
from models.mae import Encoder, MAEConfig, ViTShape


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--task", default="depth")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = MAEConfig(
        encoder=ViTShape(args.width, args.depth, 4 * args.width, 8),
        decoder=ViTShape(64, 1, 256, 2),
        frames=8,
        size=32,
        tubelet=(2, 8, 8),
        mask_ratio=0.75,
    )
    readout = Readout(
        width=64, heads=4, epochs=args.epochs, batch_size=16, train_clips=128, val_clips=32, test_clips=64
    )
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        save_encoder(Encoder(cfg).state_dict(), {"model": cfg.to_dict()}, Path(d) / "warmup")
        save_encoder(Encoder(cfg).state_dict(), {"model": cfg.to_dict()}, Path(d) / "timed")
        for split, n in zip(
            SPLITS, (readout.train_clips, readout.val_clips, readout.test_clips), strict=True
        ):
            load_clips(cfg, World(), split, n)  # clips are cached before timing
        evaluate(
            Path(d) / "warmup", args.task, readout=readout.model_copy(update={"epochs": 1})
        )  # one-time torch setup
        d = Path(d) / "timed"
        print(
            f"encoder {args.width}x{args.depth} on 8x32x32 clips, task {args.task}, {args.epochs} epochs, "
            f"{readout.train_clips}/{readout.val_clips}/{readout.test_clips} clips, {args.threads} thread(s)"
        )

        t = time.perf_counter()  # a fresh export: its features are not in the cache yet
        cached = evaluate(d, args.task, readout=readout, cache_features=True)
        t_cached = time.perf_counter() - t
        t = time.perf_counter()
        evaluate(d, args.task, readout=readout, cache_features=True)
        t_warm = time.perf_counter() - t
        t = time.perf_counter()
        recomputed = evaluate(d, args.task, readout=readout, cache_features=False)
        t_recomputed = time.perf_counter() - t

    headline = next(iter(cached))
    print(f"cached features (computed once):   {t_cached:.2f} s")
    print(f"cached features (already warm):    {t_warm:.2f} s")
    print(f"recomputed every epoch:            {t_recomputed:.2f} s")
    print(f"ratio recomputed / cached:         {t_recomputed / t_cached:.1f}x")
    print(f"ratio recomputed / warm:           {t_recomputed / t_warm:.1f}x")
    print(f"same result: {headline} {cached[headline]:.4f} vs {recomputed[headline]:.4f}")


if __name__ == "__main__":
    main()
