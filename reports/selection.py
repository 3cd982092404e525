"""Stage 4, select form: per series, the size law with the lowest backtest error; its trend;
its forecast at the --predict target (the forms averaged, reports.uncertainty); and whether
the forms disagree there."""

from __future__ import annotations

import math

import numpy as np

from reports.fit import SIZE_LAWS, Fit, FitError, predict, select_form
from reports.results import Forecast, Selection, Series, Target, Trend
from reports.text import fmt
from reports.uncertainty import forecast_points


def select(s: Series, target: Target | None, notes: list[str]) -> None:
    """Pick the series' form by backtest; forecast the target with it; flag forms that
    disagree there by more than their intervals; judge the trend."""
    laws = [e for e in s.fits if e.form in SIZE_LAWS and e.fitted]
    if not laws:
        return
    errors = {e.form: e.backtest["error"] for e in laws}
    form, why = select_form(errors)
    s.selection = Selection(form, why, errors, {e.form: e.backtest["coverage"] for e in laws})
    s.trend = trend(s.selected.fit, s.higher_is_better)
    if target is None:
        return
    at = {e.form: [float(a[0]) for a in predict(e.fit, target.N)] for e in laws}
    try:
        s.forecast = forecast(s, target, errors)
    except FitError as e:  # the forms fitted one by one, but not again together: the selected one alone
        v, lo, hi = at[form]
        s.forecast = Forecast(form, target.N, target.size, target.rung, v, lo, hi, errors[form])
        notes.append(f"{s.label}: forecast from {form} alone, the forms could not be averaged ({e})")
    s.at_target = at
    apart = [(a, b) for a in at for b in at if a < b and (at[a][2] < at[b][1] or at[b][2] < at[a][1])]
    if apart:
        text = " vs ".join(f"{k} {fmt(p[0])} [{fmt(p[1])}, {fmt(p[2])}]" for k, p in at.items())
        s.disagreement = f"forms disagree at {target.size} by more than their 95% intervals: {text}"
        notes.append(f"{s.label}: {s.disagreement}")


def forecast(s: Series, target: Target, errors: dict[str, float | None]) -> Forecast:
    """The forms averaged by a far-looking backtest (reports.uncertainty), with how far the
    forecast reaches beyond the largest rung, whether the forms agree there and the benchmark's
    coverage at that distance."""
    u = forecast_points(s.points, target.N, higher_is_better=s.higher_is_better, bounded=s.bounded)
    return Forecast(
        u.form, target.N, target.size, target.rung, u.value, u.lo, u.hi, errors.get(u.form),
        extrapolation_ratio=u.ratio, calibrated_coverage=u.coverage, forms_agree=u.forms_agree,
        trusted_ratio=u.trusted_ratio, largest_rung_miss=u.largest_rung_miss, caveat=u.caveat(),
    )  # fmt: skip


def trend(f: Fit, hib: bool) -> Trend:
    """The fitted exponent and whether the trend is resolved: it points the way the metric
    improves and its 95% interval excludes 0. In the fitted quantity, improving means
    falling, except for a power law on a higher-is-better value."""
    b = f.params["b"]
    lo, hi = f.ci.get("b", [math.nan, math.nan])
    rising = f.form == "powerlaw" and f.target == "value" and hib
    if f.form == "saturating":  # q = c + a N^-b: b > 0 is falling
        improving, excludes = b > 0, lo > 1e-6
    else:  # powerlaw q = a N^b: falling when b < 0
        improving = b > 0 if rising else b < 0
        excludes = lo > 0 if rising else hi < 0
    known = bool(np.isfinite([lo, hi]).all())  # no bootstrap, no interval: cannot say
    return Trend(b, [lo, hi], bool(improving), bool(improving and excludes) if known else None)
