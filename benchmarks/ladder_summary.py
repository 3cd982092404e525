"""Check a ladder's probe outputs against issue 14's targets.

    python benchmarks/ladder_summary.py docs/local-ladder/micro*.txt

Each file is the stdout of `benchmarks/ladder_probe.py` for one rung: its training line
("params N ... val V ...") and its eval lines ("eval TASK METRIC value se S baseline B ...").
Prints the held-out loss per rung with a power-law fit (reports.fit: R^2 in log space and the
exponent's bootstrap 95% interval), then per task: each rung's metric +- SE against the baseline
(z = SEs better than the baseline, target >= 3 at every rung) and largest vs smallest rung in
combined SEs (target >= 2 for at least 4 of 5 tasks).
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.tasks import higher_is_better  # noqa: E402
from reports.fit import fit  # noqa: E402


def parse(path: Path) -> dict:
    out = {"name": path.stem, "evals": {}}
    for line in path.read_text().splitlines():
        if m := re.match(r"params (\d+) train_tail \S+ val (\S+)", line):
            out["params"], out["val"] = int(m[1]), float(m[2])
        elif m := re.match(r"loaded .* params (\d+)", line):
            out.setdefault("params", int(m[1]))
        elif m := re.match(
            r"eval (\S+) (\S+) (\S+) se (\S+) baseline (\S+) se_base (\S+) z_vs_base \S+ secs (\S+)", line
        ):
            out["evals"][m[1]] = dict(
                metric=m[2],
                value=float(m[3]),
                se=float(m[4]),
                baseline=float(m[5]),
                se_base=float(m[6]),
                secs=float(m[7]),
            )
    return out


def main() -> None:
    rungs = sorted((parse(Path(p)) for p in sys.argv[1:]), key=lambda r: r["params"])
    print("rung        params     val")
    for r in rungs:
        print(f"{r['name']:<10} {r['params']:>8} {r.get('val', float('nan')):8.5f}")
    vals = [r.get("val") for r in rungs]
    if all(v is not None for v in vals) and len(vals) >= 3:
        N = np.array([r["params"] for r in rungs], float)
        f = fit("powerlaw", N, np.array(vals), bootstrap=1000)
        lo, hi = f.ci["b"]
        strictly = all(b < a for a, b in zip(vals, vals[1:], strict=False))
        print(
            f"val: strictly decreasing {strictly}; power law b = {f.params['b']:.4f} [{lo:.4f}, {hi:.4f}] "
            f"(excludes 0: {hi < 0 or lo > 0}), R^2(log) = {f.r2_log:.3f}, span {N[-1] / N[0]:.0f}x"
        )
    tasks = sorted({t for r in rungs for t in r["evals"]})
    n_better = 0
    for t in tasks:
        rows = [r["evals"].get(t) for r in rungs]
        if any(x is None for x in rows):
            print(f"{t}: missing at some rung")
            continue
        sign = 1 if higher_is_better(rows[0]["metric"]) else -1
        cells = []
        for x in rows:
            z = sign * (x["value"] - x["baseline"]) / max(x["se"], 1e-12)
            cells.append(f"{x['value']:.4f}+-{x['se']:.4f} (z {z:.1f})")
        zs = [sign * (x["value"] - x["baseline"]) / max(x["se"], 1e-12) for x in rows]
        d = sign * (rows[-1]["value"] - rows[0]["value"]) / math.hypot(rows[-1]["se"], rows[0]["se"])
        n_better += d >= 2
        print(
            f"{t} {rows[0]['metric']} baseline {rows[0]['baseline']:.4f}+-{rows[0]['se_base']:.4f}: "
            + " | ".join(cells)
            + f"  -> all >= 3 SE over baseline: {min(zs) >= 3}; largest vs smallest: {d:+.1f} combined SE"
        )
    if tasks:
        print(f"tasks better at the largest rung by >= 2 combined SE: {n_better} of {len(tasks)}")
        secs = sum(x["secs"] for r in rungs for x in r["evals"].values())
        print(f"eval seconds (one checkpoint per rung, this machine): {secs:.0f}")


if __name__ == "__main__":
    main()
