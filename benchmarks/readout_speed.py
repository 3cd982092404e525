"""Each frozen eval with the readout's sampling in its old order and in its new one, in one process.

    python benchmarks/readout_speed.py [--spec sweeps/local_ladder.yaml] [--tasks point_tracking,depth]
        [--export runs/local_ladder/micro5-aff682/checkpoints/step_00000760/export] [--test-clips 64]

The readout (evals.readout.AttentionReadout) reads the features at some places of the token grid and
projects them to its width. Old order: sample every feature channel, then project. New order (when
the projection is narrower than the features): project, then sample the projection. For each task
it runs `evaluate_reference` on the spec's `pixels` features (384 wide) and, with --export, `evaluate`
on that checkpoint, first with the old order then the new, on the same clips and cached features,
and prints both times and the task's headline value from each (equal up to rounding). The first
task of each model also loads its clips and computes its features; later ones read them cached.
"""

from __future__ import annotations

import argparse
import time

import torch

import evals.run as run
from contracts.references import Reference, ReferenceConfig
from contracts.spec import load_spec
from contracts.tasks import headline
from evals.readout import AttentionReadout
from evals.reference import evaluate_reference


class SampleFirst(AttentionReadout):
    """The old order: every feature channel sampled, then projected."""

    def sampled(self, x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return self.sample(self._at(x, where).flatten(2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="sweeps/local_ladder.yaml")
    p.add_argument("--export", help="a rung's export directory (a finished run's checkpoints/step_N/export)")
    p.add_argument("--tasks", help="comma-separated (default: the spec's)")
    p.add_argument("--test-clips", type=int, help="fewer test clips for a quick check (default: the spec's)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    spec = load_spec(args.spec)
    tasks = args.tasks.split(",") if args.tasks else list(spec.evals.tasks)
    d = spec.data
    pixels = ReferenceConfig(
        spec.name, Reference(name="pixels", source="pixels"), d.frames, d.resolution, tuple(d.tubelet)
    )
    models = [("pixels", None)] + ([("export", args.export)] if args.export else [])
    print(f"{'model':8s} {'task':15s} {'old s':>8s} {'new s':>8s}  headline old -> new", flush=True)
    for model, export in models:
        for task in tasks:
            readout = spec.evals.readout_for(task)
            if args.test_clips:
                readout = readout.model_copy(update={"test_clips": args.test_clips})
            times, values = [], []
            for cls in (SampleFirst, AttentionReadout):
                run.AttentionReadout = cls  # train_readout builds its head from this name
                t = time.perf_counter()
                if export is None:
                    m = evaluate_reference(pixels, task, readout=readout, data=spec.data)
                else:
                    m = run.evaluate(export, task, readout=readout, data=spec.data)
                times.append(time.perf_counter() - t)
                values.append(m[headline(task)])
            run.AttentionReadout = AttentionReadout
            print(
                f"{model:8s} {task:15s} {times[0]:8.1f} {times[1]:8.1f}  "
                f"{headline(task)} {values[0]:.4f} -> {values[1]:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
