"""Wall time of the full 3,125-start Chinchilla fit on the replication's 240 points.

.venv/bin/python benchmarks/fit_chinchilla.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parents[1]))  # run from anywhere without installing

from reports.fit import chinchilla_grid, fit  # noqa: E402

DATA = Path(__file__).parents[1] / "tests" / "data" / "chinchilla_svg_extracted_data.csv"


def main() -> None:
    df = pd.read_csv(DATA)
    df = df[df["loss"] < df["loss"].nlargest(5).min()]
    N = df["Model Size"].to_numpy()
    D = df["Training FLOP"].to_numpy() / (6 * N)
    wall, cpu = time.perf_counter(), time.process_time()
    f = fit("chinchilla", N, df["loss"].to_numpy(), D, bootstrap=0, extrapolate=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"points: {len(df)}  starts: {len(chinchilla_grid())}")
    print(f"wall time: {wall:.2f} s  (cpu {cpu:.2f} s)")
    for k, v in f.params.items():
        print(f"{k}: {v:.6g}")
    print(f"summed Huber loss: {f.loss:.7g}")


if __name__ == "__main__":
    main()
