"""How long reconciling a sweep's MLflow runs with its disk records takes (orchestrator.reconcile).

    python benchmarks/reconcile_speed.py --rungs 4 --steps 5000

Writes `--rungs` synthetic rung directories of `--steps` training steps each (6 training metrics a
step, a system sample every 10 steps, evals at 10 checkpoints x 2 tasks), then times three passes
on a fresh SQLite store: restoring everything (an empty store), finding nothing missing, and
restoring the last 10% (a lost tracker buffer's worth, and more).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from contracts.layout import RungPaths, write_json
from orchestrator.reconcile import reconcile_runs
from orchestrator.tracking import Tracker

KEYS = (
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "train/clips_per_s",
    "train/tokens_per_s",
    "train/tflops",
)


def write_rung(paths: RungPaths, steps: int) -> None:
    paths.root.mkdir(parents=True)
    with open(paths.metrics, "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, **{k: 1.0 / s + i for i, k in enumerate(KEYS)}}) + "\n")
    with open(paths.system, "w") as f:
        for s in range(10, steps + 1, 10):
            f.write(json.dumps({"step": s, "system/cpu_utilization_percentage": 50.0}) + "\n")
    for step in range(steps // 10, steps + 1, steps // 10):
        for task in ("depth", "action"):
            write_json(
                paths.eval_record(step, task, "frozen"),
                {"state": "done", "metrics": {"m": step / steps, "baseline_m": 0.5}},
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rungs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}")
        exp = tracker.experiment_id("bench")
        runs = {}
        for i in range(args.rungs):
            paths = RungPaths(root / "bench" / f"r{i}-000000")
            write_rung(paths, args.steps)
            runs[paths.key] = (paths, tracker.client.create_run(exp).info.run_id)
        quiet = []
        for label in ("empty store", "nothing missing", "last 10% lost"):
            if label == "last 10% lost":
                with sqlite3.connect(root / "mlflow.db") as db:
                    db.execute("DELETE FROM metrics WHERE step > ?", (int(args.steps * 0.9),))
            fresh = Tracker(f"sqlite:///{root / 'mlflow.db'}")  # as a restarted driver's tracker
            t0 = time.perf_counter()
            out = reconcile_runs(runs, fresh.reconcile, quiet.append)
            points = sum(len(v) for r in out.values() for v in r.values())
            print(
                f"{label:>16}: {time.perf_counter() - t0:6.2f}s for {args.rungs} rungs x {args.steps} steps, "
                f"{points} points restored",
                flush=True,
            )


if __name__ == "__main__":
    main()
