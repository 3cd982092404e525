"""Stage 2, select points: from the results table to one `Series` per (task, mode, metric, dataset).

Failed rungs are named and left out; baselines are never fitted; a rung missing a value that
other metrics have is named; each rung contributes its final (or best-by-validation) checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from contracts.names import SYNTHETIC
from reports.collect import is_baseline
from reports.results import Series, plain

FAILED = "failed"
POINT_COLUMNS = ["rung", "params", "train_flops", "step", "value", "se"]


@dataclass
class SeriesRows:
    """A series and the table rows it was built from (chinchilla fits every checkpoint)."""

    series: Series
    rows: pd.DataFrame  # every checkpoint of every usable rung
    points: pd.DataFrame  # one checkpoint per rung: what the size laws fit


@dataclass
class Points:
    """What stage 2 found: the rungs (name -> params, smallest first), the failed ones, the series."""

    rungs: pd.Series
    failed: list[str]
    series: list[SeriesRows]


def series_label(task: str, mode: str, metric: str, dataset: str = SYNTHETIC) -> str:
    label = f"{task}/{metric} ({mode})" if task else f"{metric} ({mode})"
    return label if dataset == SYNTHETIC else f"{label} [{dataset}]"  # eval data on disk: its own series


def records(df: pd.DataFrame, cols: list[str]) -> dict[str, list]:
    return {c: [plain(v) for v in df[c]] for c in cols if c in df.columns}


def select_points(table: pd.DataFrame, checkpoint: str, notes: list[str]) -> Points:
    failed = failed_rungs(table, notes)
    if checkpoint == "best" and "split" not in table.columns:
        notes.append(
            "checkpoint=best needs a `split` column with validation rows; used each rung's final checkpoint"
        )
    ok = table[~table["rung"].isin(failed) & table["metric"].notna() & ~table["metric"].map(is_baseline)]
    ok = ok[ok["value"].notna()]
    rungs = table.loc[~table["rung"].isin(failed)].groupby("rung")["params"].first().sort_values()
    out = []
    for (task, mode, metric, dataset), g in ok.groupby(["task", "mode", "metric", "dataset"], sort=True):
        label = series_label(task, mode, metric, dataset)
        hib = bool(g["higher_is_better"].iloc[0])
        missing = [r for r in rungs.index if r not in set(g["rung"])]
        if missing:
            notes.append(f"{label}: no value for rung(s) {', '.join(missing)}, which other metrics have")
        points = size_points(g, checkpoint, hib)
        series = Series(
            task=task,
            mode=mode,
            metric=metric,
            dataset=dataset,
            label=label,
            higher_is_better=hib,
            bounded=bool(g["bounded"].iloc[0]) if "bounded" in g else False,
            missing_rungs=missing,
            points=records(points, POINT_COLUMNS),
        )
        out.append(SeriesRows(series, g, points))
    return Points(rungs, failed, out)


def failed_rungs(table: pd.DataFrame, notes: list[str]) -> list[str]:
    if "status" not in table.columns:
        return []
    bad = table[table["status"].astype(str).str.lower() == FAILED]
    names = []
    for rung, g in bad.groupby("rung", sort=False):
        why = (
            g["failure"].dropna().astype(str).iloc[0]
            if "failure" in g and g["failure"].notna().any()
            else "no reason recorded"
        )
        notes.append(f"rung {rung} failed ({why}); left out of every fit")
        names.append(str(rung))
    return names


def size_points(g: pd.DataFrame, checkpoint: str, hib: bool) -> pd.DataFrame:
    """One point per rung (or a few, if repeated): its final or best-by-validation checkpoint."""
    if "split" in g.columns and g["split"].notna().any():
        val = g[g["split"] == "val"]
        test = g[g["split"] != "val"]
        main = test if len(test) else val
        if checkpoint == "best" and len(val):
            best = val.loc[(val["value"] if hib else -val["value"]).groupby(val["rung"]).idxmax()]
            steps = dict(zip(best["rung"], best["step"], strict=True))
            chosen = main[main["step"] == main["rung"].map(steps)]
            return chosen if len(chosen) else best
        g = main
    last = g.groupby("rung")["step"].transform("max")
    return g[(g["step"] == last) | last.isna()]
