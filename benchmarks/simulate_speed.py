"""How fast `sweep simulate` is: the shipped ladder with Llama 3's failure rate over 50 seeds
(issue 26: at most 30 s, recommendations included), and a 1,000-rung spec (an LR grid of 200
points x 5 sizes: at most 60 s; the simulation alone, --no-recommend, since the recommendations
re-simulate the sweep dozens of times), each through the real CLI in a subprocess; prints wall and CPU seconds, and the policy's
time per decision (from --json), which shows whether a decision's cost grows with the sweep.

    python benchmarks/simulate_speed.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZE_LADDER = ROOT / "sweeps" / "size_ladder.yaml"


def thousand_rung_spec(folder: Path) -> Path:
    raw = yaml.safe_load(SIZE_LADDER.read_text())
    raw["name"] = "lr_grid_1000"
    raw["ladder"] = raw["ladder"][:5]  # S, B, L, H, G
    raw["search"] = {"lr": [round(1e-5 * 1.02**i, 10) for i in range(200)]}
    raw["evals"].update({"checkpoints": "final", "modes": ["frozen"]})
    path = folder / "lr_grid_1000.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def timed(args: list[str]) -> tuple[float, float, dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(proc.stdout)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            (
                "size_ladder, llama3, 50 seeds",
                [str(SIZE_LADDER), "--failures", "llama3", "--seeds", "50"],
                30,
            ),
            ("1,000 rungs (LR grid x 5 sizes)", [str(thousand_rung_spec(Path(tmp))), "--no-recommend"], 60),
        ]
        print(f"{'case':36} {'wall s':>7} {'CPU s':>7} {'limit s':>7} {'decisions':>9} {'ms/decision':>11}")
        for name, args, limit in cases:
            wall, cpu, out = timed(["simulate", *args, "--cluster", "128x8xH100"])
            s = out["summary"]
            print(f"{name:36} {wall:7.1f} {cpu:7.1f} {limit:7d} {s['decisions']:9d} {s['decide_ms']:11.3f}")


if __name__ == "__main__":
    main()
