"""The report's tables, as header + rows of text: fits, form selection, forecasts, final results."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.collect import BASELINE_PREFIX, is_baseline
from reports.points import series_label
from reports.results import ForecastScores, Report, Series
from reports.text import extrapolation_text, fmt, interval, param_text, pct, trend_text
from reports.units import format_size

FIT_HEADER = [
    "series",
    "form",
    "rungs",
    "parameters [95% bootstrap CI]",
    "R² (log)",
    "Huber loss",
    "leave-largest-out error",
    "fitted on",
]
SELECTION_HEADER = [
    "series",
    "form",
    "backtest error (mean |rel|)",
    "interval coverage",
    "windows",
    "at target",
    "",
]
FORECAST_HEADER = [
    "registered (date, sha256)",
    "series",
    "form",
    "target",
    "forecast [95% interval]",
    "observed",
    "error",
    "inside",
]


def fit_rows(series: list[Series]) -> list[list[str]]:
    rows = []
    for s in series:
        for e in s.fits:
            if e.fitted:
                f = e.fit
                params = "; ".join(f"{k} = {v}" for k, v in param_text(f))
                rows.append(
                    [s.label, e.form, str(f.n_rungs), params, f"{f.r2_log:.3f}", f"{f.loss:.4g}"]
                    + [extrapolation_text(f), f.target]
                )
            else:
                rows.append([s.label, e.form, "–", f"not fitted: {e.reason}", "–", "–", "–", "–"])
    return rows


def selection_rows(report: Report) -> list[list[str]]:
    rows = []
    for s in report.series:
        for e in (e for e in s.fits if e.backtest is not None):
            bt = e.backtest
            at = (s.at_target or {}).get(e.form)
            rows.append(
                [
                    s.label,
                    e.form,
                    pct(bt["error"]),
                    f"{pct(bt['coverage'])} of {bt['scored_windows']}" if bt["scored_windows"] else "–",
                    str(len(bt["windows"])),
                    interval(*at) if at else "–",
                    "selected" if s.selection and s.selection.form == e.form else "",
                ]
            )
    return rows


def forecast_rows(fc: ForecastScores) -> list[list[str]]:
    rows = []
    for r in fc.rows:
        inside = {True: "yes", False: "NO", None: "–"}[r.inside] if r.observed is not None else "pending"
        rows.append(
            [
                f"{r.created[:10]} {r.sha256[:12]}",
                r.series,
                r.form,
                r.size,
                interval(r.value, r.lo, r.hi),
                fmt(r.observed),
                f"{r.rel_error:+.1%}" if r.rel_error is not None else "–",
                inside,
            ]
        )
    return rows


def coverage_text(fc: ForecastScores) -> str:
    if not fc.rows:
        return "No registered forecasts yet: `sweep report --predict SIZE` registers one."
    if not fc.scored:
        return f"{fc.pending} registered forecast(s), none scored yet (their rungs have no results)."
    return (
        f"Coverage: {fc.inside}/{fc.scored} ({fc.coverage:.0%}) scored forecasts landed inside "
        f"their 95% interval; {fc.pending} pending."
    )


def final_table(table: pd.DataFrame, series: list[Series] | None = None) -> pd.DataFrame:
    """Final-checkpoint values (± their standard error, where known): one row per series, one column
    per rung (smallest first), whether its trend is resolved, and the series' trivial baseline beside
    them (it depends on the test data only, not on the rung)."""
    t = table[table["metric"].notna()]
    if t.empty:
        return pd.DataFrame()
    last = t.groupby(["rung", "task", "mode", "metric", "dataset"])["step"].transform("max")
    t = t[(t["step"] == last) | last.isna()]
    base = t[t["metric"].map(is_baseline)]
    t = t[~t["metric"].map(is_baseline)]

    def label(d, metric):
        return [series_label(*k) for k in zip(d["task"], d["mode"], metric, d["dataset"], strict=True)]

    t = t.assign(series=label(t, t["metric"]))
    rungs = t.drop_duplicates("rung").sort_values("params")
    wide = t.pivot_table(index="series", columns="rung", values="value", aggfunc="mean")[list(rungs["rung"])]
    if "se" in t and t["se"].notna().any():
        se = t.pivot_table(index="series", columns="rung", values="se", aggfunc="mean", dropna=False)
        se = se.reindex(index=wide.index, columns=wide.columns)
        wide = wide.astype(object)
        for c in wide.columns:
            wide[c] = [
                fmt(v) if not np.isfinite(e) else f"{fmt(v)} ± {fmt(e, 2)}"
                for v, e in zip(wide[c], se[c].astype(float), strict=True)
            ]
    wide.columns = [f"{r} ({format_size(p)})" for r, p in zip(rungs["rung"], rungs["params"], strict=True)]
    if series is not None:
        wide["trend"] = pd.Series({s.label: trend_text(s) for s in series})
    if not base.empty:
        stripped = base["metric"].str.slice(len(BASELINE_PREFIX))
        wide["trivial baseline"] = base.assign(series=label(base, stripped)).groupby("series")["value"].mean()
    return wide.reset_index()
