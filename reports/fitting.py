"""Stage 3, fit: every requested form on every series, each size law with its backtest.

Values a log-space fit cannot take are left out and named; a form that cannot be fitted
says why (too few rungs, no data-seen column for chinchilla) instead of failing the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.collect import ReportError
from reports.fit import FORMS, SIZE_LAWS, FitError, backtest, fit, fitted_quantity
from reports.points import SeriesRows, records
from reports.results import FormFit, Series
from reports.text import extrapolation_text, fmt, param_text

AUTO = "auto"  # every size law, backtested; the best is selected per series
BACKTEST_BOOTSTRAP = 200  # resamples per backtest window: enough for a 95% interval's coverage


@dataclass
class FitSettings:
    """How every law of a report is fitted."""

    x: str = "params"
    huber_delta: float = 1e-3
    bootstrap: int = 1000
    seed: int = 0


def expand_forms(fits) -> list[str]:
    """The forms to fit: `auto` means every size law. Unknown names are a ReportError."""
    out: list[str] = []
    for f in fits:
        for name in SIZE_LAWS if f == AUTO else (f,):
            if name not in FORMS:
                raise ReportError(f"unknown fit form {name!r}; choose from {AUTO}, {', '.join(FORMS)}")
            if name not in out:
                out.append(name)
    return out


def fit_series(item: SeriesRows, forms: list[str], how: FitSettings, notes: list[str], log) -> None:
    """Fit each form to the series (chinchilla on every checkpoint, size laws on one per rung)."""
    s = item.series
    for form in forms:
        entry = fit_form(form, item.rows if form == "chinchilla" else item.points, s, how, notes)
        s.fits.append(entry)
        log(f"{s.label} {form}: {summary(entry)}")


def fit_form(form: str, pts: pd.DataFrame, s: Series, how: FitSettings, notes: list[str]) -> FormFit:
    chin = form == "chinchilla"
    entry = FormFit(form=form, x="params" if chin else how.x)
    N = pts[entry.x].to_numpy(float)
    D = None
    if chin:
        entry.D, D = data_seen(pts)
        if D is None:
            entry.reason = "chinchilla needs clips_seen, tokens or train_flops per checkpoint"
            return entry
        entry.points = records(pts.assign(D=D), ["rung", "params", "step", "D", "value"])
    y = pts["value"].to_numpy(float)
    try:
        q, target = fitted_quantity(form, y, s.higher_is_better, s.bounded)
    except FitError as e:
        entry.reason = str(e)
        return entry
    keep = np.isfinite(q) & (q > 0) & (N > 0) & (True if D is None else D > 0)
    if not keep.all():
        _exclude(entry, pts[~keep], target, s.label, notes)
    se = None if chin else _weights(pts, keep, s.label, form, notes)
    law = dict(higher_is_better=s.higher_is_better, bounded=s.bounded, se=se, huber_delta=how.huber_delta)
    try:
        entry.fit = fit(
            form,
            N[keep],
            y[keep],
            None if D is None else D[keep],
            bootstrap=how.bootstrap,
            seed=how.seed,
            **law,
        )
    except FitError as e:
        rungs = list(dict.fromkeys(pts.loc[keep].sort_values("params")["rung"]))
        entry.reason = f"{e} (usable rungs: {', '.join(rungs) or 'none'})"
        return entry
    entry.status = "fitted"
    if not chin:
        n = min(how.bootstrap, BACKTEST_BOOTSTRAP)
        entry.backtest = backtest(form, N[keep], y[keep], bootstrap=n, seed=how.seed, **law)
    return entry


def _exclude(entry: FormFit, excl: pd.DataFrame, target: str, label: str, notes: list[str]) -> None:
    entry.excluded = records(excl, ["rung", "step", "value"])
    where = ", ".join(
        f"{r} (step {fmt(s)}: {fmt(v)})"
        for r, s, v in zip(excl["rung"], excl["step"], excl["value"], strict=True)
    )
    notes.append(
        f"{label} {entry.form}: {target} is not positive (or {entry.x} is missing) for {where}; "
        "left out of this log-space fit"
    )


def _weights(pts: pd.DataFrame, keep, label: str, form: str, notes: list[str]):
    """Eval standard errors, where the table has a positive one for every point: weights and
    interval noise; otherwise None (unweighted)."""
    se = pts["se"].to_numpy(float)[keep] if "se" in pts else None
    if se is not None and not (np.isfinite(se) & (se > 0)).all():
        if np.isfinite(se).any():
            notes.append(f"{label} {form}: some points have no positive standard error; fitted unweighted")
        se = None
    return se


def data_seen(pts: pd.DataFrame) -> tuple[str | None, np.ndarray | None]:
    """D for chinchilla: tokens if known, else clips seen, else training FLOPs / (6 N)."""
    for col in ("tokens", "clips_seen"):
        if col in pts.columns and pts[col].notna().all():
            return col, pts[col].to_numpy(float)
    if pts["train_flops"].notna().all():
        return "train_flops / (6 params)", (pts["train_flops"] / (6 * pts["params"])).to_numpy(float)
    return None, None


def summary(entry: FormFit) -> str:
    """One line on a fitted (or unfitted) form, for the progress log."""
    if not entry.fitted:
        return f"not fitted: {entry.reason}"
    f = entry.fit
    return (
        ", ".join(f"{k} = {v}" for k, v in param_text(f))
        + f"; R²(log) {f.r2_log:.3f}; leave-largest-out {extrapolation_text(f)}"
    )
