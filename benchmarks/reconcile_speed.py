"""How long reconciling a sweep's MLflow runs with its disk records takes (orchestrator.reconcile).

    python benchmarks/reconcile_speed.py --rungs 4 --steps 5000
    MLFLOW_TRACKING_USERNAME=… MLFLOW_TRACKING_PASSWORD=… \
        python benchmarks/reconcile_speed.py --tracking-uri http://127.0.0.1:5000

Writes `--rungs` synthetic rung directories of `--steps` training steps each (6 training metrics a
step, a system sample every 10 steps, evals at 10 checkpoints x 2 tasks), then times three passes
on a fresh SQLite store (or, with --tracking-uri, in a fresh experiment on that MLflow server):
restoring everything (an empty store), finding nothing missing, and restoring the last 10% (a lost
tracker buffer's worth, and more; on a server, new runs first given the first 90% untimed).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from contracts.layout import RungPaths, write_json
from orchestrator.reconcile import disk_points, reconcile_runs
from orchestrator.tracking import Tracker, check_tracking

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


def lose_last_tenth(tracker: Tracker, exp: str, runs: dict, steps: int, uri: str) -> dict:
    """The store without the points past 90% of training: deleted from a SQLite file; on a server
    (no delete API for metric points), new runs given everything up to 90% (untimed)."""
    cut = int(steps * 0.9)
    if uri.startswith("sqlite:///"):
        with sqlite3.connect(uri[len("sqlite:///") :]) as db:
            db.execute("DELETE FROM metrics WHERE step > ?", (cut,))
        return runs
    fresh = {}
    for key, (paths, _) in runs.items():
        run_id = tracker.client.create_run(exp).info.run_id
        early = {k: {s: v for s, v in series.items() if s <= cut} for k, series in disk_points(paths).items()}
        tracker.reconcile(run_id, early)
        fresh[key] = (paths, run_id)
    return fresh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rungs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--tracking-uri", help="an MLflow server (http://host:port); default: a temporary SQLite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        uri = args.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        check_tracking(uri)
        tracker = Tracker(uri)
        exp = tracker.experiment_id(f"reconcile-bench-{uuid.uuid4().hex[:8]}")
        runs = {}
        for i in range(args.rungs):
            paths = RungPaths(root / "bench" / f"r{i}-000000")
            write_rung(paths, args.steps)
            runs[paths.key] = (paths, tracker.client.create_run(exp).info.run_id)
        quiet = []
        print(f"{args.rungs} rungs x {args.steps} steps on {uri}", flush=True)
        for label in ("empty store", "nothing missing", "last 10% lost"):
            if label == "last 10% lost":
                runs = lose_last_tenth(tracker, exp, runs, args.steps, uri)
            fresh = Tracker(uri)  # as a restarted driver's tracker
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
