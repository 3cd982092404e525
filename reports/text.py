"""How a report writes numbers and verdicts: shared by the findings, the tables and the figure."""

from __future__ import annotations

import math

import numpy as np

from reports.fit import Fit
from reports.units import format_size


def fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float | int | np.floating) else str(v)


def interval(v, lo, hi) -> str:
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


def param_text(f: Fit) -> list[tuple[str, str]]:
    out = []
    for k, v in f.params.items():
        ci = f.ci.get(k)
        out.append((k, f"{fmt(v)} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else fmt(v)))
    return out


def extrapolation_text(f: Fit) -> str:
    e = f.extrapolation or {}
    if "rel_error" not in e:
        return e.get("error", "–")
    return (
        f"{e['rel_error']:+.2%} at {format_size(e['held_out_N'])} "
        f"(pred {fmt(e['predicted'])}, actual {fmt(e['actual'])})"
    )


def fitted_on(target: str, metric: str) -> str:
    """What a law was fitted on, in the metric's name: "1 - iou" rather than "1 - value"."""
    return target.replace("value", metric)


def trend_text(s) -> str:
    """What the report's table and a panel say of a series' trend: "trend resolved" only when the
    selected law's exponent points the way the metric improves and its 95% interval excludes 0
    (reports.selection.trend); anything else, an unfitted series included, is "no trend resolved"."""
    return "trend resolved" if s.trend is not None and s.trend.resolved else "no trend resolved"


def selection_text(s) -> str:
    sel = s.selection
    errs = ", ".join(f"{k} {pct(v)}" for k, v in sel.errors.items())
    return f"{sel.form} ({sel.why}; backtest error {errs})"
