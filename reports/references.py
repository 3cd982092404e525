"""Reference models in the report (issue 25): their rows, their markers, the ladder against them.

Reference rows reach the results table with `kind = "reference"` (from their MLflow runs, tag
sweep4d.role=reference, or a file's `kind` column); `split` takes them out before anything is fitted,
so a reference is never a point of a size law. What the report does with them:

- every panel draws each reference as a labelled marker at its parameter count with its standard
  error (a reference without parameters, `pixels`, as a labelled dotted line);
- `comparison_rows`: per headline series, the ladder's final values and the references', value ± se,
  ranked best first;
- `findings`: per headline and reference, the first rung that beats it by more than 2 combined SE
  (sqrt(se_rung² + se_ref²)), or none; and where the selected law extrapolates, the size at which
  the ladder is forecast to match it, with the size range where its 95% interval reaches it.

`reference_points` turns the rows into `results.ReferencePoint`s (Report.references, fits.json);
everything after that reads the typed points and the typed series.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from contracts.names import (
    REFERENCE_ROLE,
    REFERENCE_TAG,
    ROLE_TAG,
    eval_key_dataset,
    parse_eval_metric_key,
    se_of,
)
from contracts.tasks import BASELINE_PREFIX
from reports.fit import predict
from reports.results import ReferencePoint, Series
from reports.units import format_size

KIND = "kind"
MARKERS = "s^vP*Xdp<>h"
MAX_SIZE = 1e13  # a forecast match beyond 10T parameters is "not within reach"


def collect_rows(client, experiment_id: str, sweep: str) -> list[dict]:
    """The table rows of every reference run of a sweep (metrics at step 0, with their SEs)."""
    rows = []
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{REFERENCE_ROLE}'")
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        values, errors = {}, {}
        for key, v in metrics.items():
            parsed = parse_eval_metric_key(key)
            if parsed is None:
                continue
            task, mode, metric = parsed
            of = se_of(metric)
            (errors if of else values)[(task, mode, of or metric, eval_key_dataset(key))] = v
        for (task, mode, metric, dataset), v in values.items():
            rows.append(
                {
                    "sweep": sweep,
                    "rung": params.get("reference", run.info.run_name),
                    "rung_key": run.data.tags.get(REFERENCE_TAG, run.info.run_name),
                    "params": float(params.get("num_params", "nan")),
                    "step": 0,
                    "task": task,
                    "mode": mode,
                    "metric": metric,
                    "value": v,
                    "se": errors.get((task, mode, metric, dataset), np.nan),
                    "dataset": dataset,
                    "source": params.get("source"),
                    "model_id": params.get("id"),
                    KIND: REFERENCE_ROLE,
                }
            )
    return rows


def split(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the ladder's rows, the references' rows)."""
    if KIND not in table.columns:
        return table, table.iloc[0:0]
    is_ref = table[KIND] == REFERENCE_ROLE
    return table[~is_ref].reset_index(drop=True), table[is_ref].reset_index(drop=True)


def reference_points(refs: pd.DataFrame) -> list[ReferencePoint]:
    """The references' own values (not their trivial `baseline_` rows, which are the ladder's to
    show), each at its final step, as typed points for the report."""
    if refs.empty:
        return []
    refs = refs[refs["metric"].notna() & ~refs["metric"].astype(str).str.startswith(BASELINE_PREFIX)]
    last = refs.groupby(["rung", "task", "mode", "metric", "dataset"])["step"].transform("max")
    refs = refs[(refs["step"] == last) | last.isna()]
    return [
        ReferencePoint(
            name=str(r.rung),
            params=float(r.params) if pd.notna(r.params) and r.params > 0 else 0.0,
            task=str(r.task or ""),
            mode=str(r.mode),
            metric=str(r.metric),
            dataset=str(r.dataset),
            value=float(r.value),
            se=float(r.se) if "se" in refs and pd.notna(r.se) else None,
        )
        for r in refs.itertuples()
    ]


def points(refs: list[ReferencePoint], s: Series) -> list[ReferencePoint]:
    """The references measured on series `s` (its task, mode, metric and dataset)."""
    key = (s.task, s.mode, s.metric, s.dataset)
    return [p for p in refs if (p.task, p.mode, p.metric, p.dataset) == key]


def _se(v: float | None) -> float:
    return v if v is not None and math.isfinite(v) else math.nan


def draw(ax, refs: list[ReferencePoint]) -> list[float]:
    """Each reference as a labelled marker with its error bar; returns their x values."""
    xs = []
    for i, p in enumerate(refs):
        se = _se(p.se)
        yerr = [se] if math.isfinite(se) else None
        if p.params > 0:
            ax.errorbar(
                [p.params], [p.value], yerr=yerr, fmt=MARKERS[i % len(MARKERS)], color="k", mfc="white",
                ms=6, capsize=3, zorder=4, label=f"{p.name} (reference)",
            )  # fmt: skip
            ax.annotate(p.name, (p.params, p.value), textcoords="offset points", xytext=(4, 4), fontsize=6)
            xs.append(p.params)
        else:  # no parameters: no place on a log axis, so a line across the panel
            ax.axhline(p.value, ls="--", color="0.45", lw=1, label=f"{p.name} (reference, 0 params)")
            if math.isfinite(se):
                ax.axhspan(p.value - se, p.value + se, color="0.45", alpha=0.1, lw=0)
    return xs


def better(a: float, b: float, hib: bool) -> float:
    """How much a beats b (positive: better)."""
    return a - b if hib else b - a


def first_rung_beating(s: Series, p: ReferencePoint) -> tuple[str, float] | None:
    """The smallest rung whose value beats the reference by more than 2 combined SE, with that margin
    in combined SE; None when no rung does."""
    pts = s.points
    order = np.argsort(np.asarray(pts["params"], float))
    for i in order:
        v, se = float(pts["value"][i]), pts.get("se", [None] * len(pts["value"]))[i]
        combined = math.sqrt(np.nan_to_num(_se(se)) ** 2 + np.nan_to_num(_se(p.se)) ** 2)
        margin = better(v, p.value, s.higher_is_better)
        if combined > 0 and margin > 2 * combined:
            return str(pts["rung"][i]), margin / combined
    return None


def match_size(s: Series, p: ReferencePoint) -> tuple[float, float, float] | None:
    """Where the selected law extrapolates: the size at which its forecast reaches the reference's
    value, and the sizes where its interval's optimistic / pessimistic edge does (NaN: not within
    MAX_SIZE). None without a selected, improving size law."""
    if s.selection is None or s.trend is None or not s.trend.improving:
        return None
    chosen = s.selected
    if chosen is None or not chosen.fitted or chosen.form == "chinchilla":
        return None
    fit = chosen.fit
    hi_n = float(np.nanmax(np.asarray(s.points["params"], float)))
    grid = np.geomspace(hi_n, MAX_SIZE, 400)
    value, lo, hi = predict(fit, grid)
    hib = s.higher_is_better

    def reach(which: int) -> float:
        """The first size where curve `which` (0 value, 1 lo, 2 hi) reaches the reference, refined
        between grid points by bisection in log size."""

        def gap(n):
            return better(float(predict(fit, [n])[which][0]), p.value, hib)

        curve = (value, lo, hi)[which]
        ok = np.flatnonzero(better(np.asarray(curve), p.value, hib) >= 0)
        if not len(ok):
            return math.nan
        if ok[0] == 0:
            return float(grid[0])
        a, b = math.log(grid[ok[0] - 1]), math.log(grid[ok[0]])
        for _ in range(40):
            mid = (a + b) / 2
            a, b = (a, mid) if gap(math.exp(mid)) >= 0 else (mid, b)
        return math.exp(b)

    pick = (2, 1) if hib else (1, 2)  # (optimistic edge, pessimistic edge)
    return reach(0), reach(pick[0]), reach(pick[1])


def finding(s: Series, p: ReferencePoint, x: str = "params") -> str:
    """One sentence: which rung first beats the reference by > 2 combined SE, and where the ladder is
    forecast to match it."""
    err = f" ± {p.se:.2g}" if math.isfinite(_se(p.se)) else ""
    ref = f"{p.name} ({format_size(p.params) if p.params > 0 else 'no'} params, {p.value:.4g}{err})"
    beat = first_rung_beating(s, p)
    line = f"{s.label} vs {ref}: " + (
        f"{beat[0]} is the first rung to beat it by more than 2 combined SE ({beat[1]:.1f} SE)"
        if beat
        else "no rung beats it by more than 2 combined SE"
    )
    m = match_size(s, p) if x == "params" else None  # a law in training FLOPs forecasts no size
    if m is not None and beat is None:
        n, a, b = m
        if math.isfinite(n):
            edges = sorted(v for v in (a, b) if math.isfinite(v))
            lo, hi = (edges[0], edges[-1]) if edges else (math.nan, math.nan)
            rng = f" (interval reaches it from {format_size(lo)}" + (
                f" to {format_size(hi)})" if hi != lo else ")"
            )
            line += f"; the {s.selection.form} law forecasts the ladder to match it at {format_size(n)}"
            line += rng if math.isfinite(lo) else ""
        else:
            line += f"; the {s.selection.form} law does not reach it below {format_size(MAX_SIZE)}"
    return line


def findings(series: list[Series], refs: list[ReferencePoint], x: str = "params") -> list[str]:
    return [finding(s, p, x) for s in series for p in points(refs, s)]


COMPARISON_HEADER = ["series", "model", "kind", "params", "value ± se", "rank"]


def comparison_rows(series: list[Series], refs: list[ReferencePoint]) -> list[list[str]]:
    """Per headline series with references: every rung's final value and every reference's,
    ranked best first."""
    rows = []
    for s in series:
        mine = points(refs, s)
        if not mine:
            continue
        pts = s.points
        ses = pts.get("se", [None] * len(pts["rung"]))
        entries = [
            (str(r), "rung", float(n), float(v), _se(se))
            for r, n, v, se in zip(pts["rung"], pts["params"], pts["value"], ses, strict=True)
        ] + [(p.name, "reference", p.params, p.value, _se(p.se)) for p in mine]
        ranked = sorted(entries, key=lambda e: -e[3] if s.higher_is_better else e[3])
        rank = {id(e): i + 1 for i, e in enumerate(ranked)}
        for e in sorted(entries, key=lambda e: (e[1] != "rung", e[2])):
            name, kind, n, v, se = e
            err = f" ± {se:.2g}" if math.isfinite(se) else ""
            size = format_size(n) if math.isfinite(n) and n > 0 else "0"
            rows.append([s.label, name, kind, size, f"{v:.4g}{err}", str(rank[id(e)])])
    return rows
