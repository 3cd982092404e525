"""Forecasts whose intervals carry the doubt about the form, not only about its parameters.

Far from the data the choice of form dominates: a power law and a saturating law that fit
the small rungs equally well can part by tens of percent ten sizes out. Each size law is
fitted with its parametric bootstrap (reports.fit), then:

- a backtest that looks as far as the forecast: fitted on the rungs up to each cutoff, every
  later rung is predicted, and each error is scaled per unit of log extrapolation ratio and
  weighted by how far it reached relative to the target (`far_backtest`);
- the forms are averaged with weights from those backtests (inverse scaled error, in log space);
- the interval is the weighted mixture of the forms' bootstrap draws (so it spans the credible
  forms), widened by an extrapolation term that grows with the log ratio: the larger of the
  series' own scaled backtest error and a floor learned from public ladders (conformal-style
  calibration, docs/forecasting.md), or, with too few rungs for a backtest, the error learned
  from three-rung forecasts of those ladders;
- the forecast is form-limited when the forms' own intervals do not overlap at the target; then
  `trusted_ratio` says how far beyond the largest rung they still do.

Priors come with the log-space fits: an error metric (or 1 − an accuracy) stays above 0, so an
accuracy stays below 1, and the saturating form carries a floor. No forecast is worse than the
worst fitted rung, nor its interval by more than a measurement's noise: a larger model does not,
in expectation, fall below every smaller one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import t as student_t

from reports.fit import (
    LEVEL,
    MIN_RUNGS,
    SIZE_LAWS,
    Fit,
    FitError,
    _to_metric,
    fit_many,
    fitted_quantity,
    predict,
)
from reports.forms import _FORMS, Emergence
from reports.law import _cols

CALIBRATION_FILE = Path(__file__).with_name("forecast_calibration.json")
RATIO_BINS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 1e12)  # extrapolation ratio bins of the calibration
KAPPA_FLOOR = 0.03  # least log-space error per unit of ln(ratio): tuned on the tuning ladders only
KAPPA_NO_BACKTEST = 0.06  # the same for series too short for a backtest (3 rungs): tuned with --rungs 3
BOOTSTRAP = 200
LOGLINEAR = "loglinear"
EMERGENCE = "emergence"  # logistic in log N from the chance level (reports.forms.Emergence)
CLOSED_FORMS = (LOGLINEAR, EMERGENCE)  # fitted in closed form, with Student-t draws
# Averaged by default. Adding LOGLINEAR made the tuning ladders' median error at R = 10 worse
# (7.9% -> 11.4% on Pythia), so it is offered, not used (docs/forecasting.md). So is EMERGENCE:
# on the tuning ladders it moved the median error at R = 10 from 7.1% to 6.5% but at R = 5
# from 4.7% to 7.8%, and widened the intervals (session 9, docs/forecasting.md).
FORMS_AVERAGED = SIZE_LAWS
LOW_COVERAGE = 0.80  # below this benchmark coverage at its ratio, a forecast is flagged
# A forecast whose averaged law passes this far (a share of the rungs' range) from its own largest
# fitted rung is said to miss it: on the public ladders such forecasts erred several times more
# (docs/forecasting.md, session 15).
MISSES_LARGEST = 0.30


@dataclass
class FormForecast:
    form: str
    value: float
    lo: float  # the form's own bootstrap interval (parameters and noise only)
    hi: float
    weight: float
    scaled_error: float | None  # backtest log error per unit ln(ratio), far windows weighted up


@dataclass
class Forecast:
    """One series' forecast at a target size, and how far it can be trusted."""

    value: float
    lo: float
    hi: float
    form: str  # the form with the most weight
    why: str
    ratio: float  # target size / largest fitted size
    forms_agree: bool
    trusted_ratio: float  # up to this ratio the forms' own intervals overlap
    coverage: float | None  # the benchmark's coverage of these intervals at this ratio
    forms: list[FormForecast] = field(default_factory=list)
    # |averaged law − measured| at the largest fitted rung, a share of the rungs' range (or noise)
    largest_rung_miss: float = 0.0

    @property
    def form_limited(self) -> bool:
        return not self.forms_agree

    @property
    def misses_largest_rung(self) -> bool:
        return self.largest_rung_miss >= MISSES_LARGEST

    @property
    def low_coverage(self) -> bool:
        return self.coverage is not None and self.coverage < LOW_COVERAGE

    def record(self) -> dict:
        """What a report and predictions.json carry beside the value and its interval."""
        return {
            "extrapolation_ratio": self.ratio,
            "calibrated_coverage": self.coverage,
            "forms_agree": self.forms_agree,
            "form_limited": self.form_limited,
            "trusted_ratio": self.trusted_ratio,
            "largest_rung_miss": self.largest_rung_miss,
            "weights": {f.form: f.weight for f in self.forms},
            "why": self.why,
        }

    def caveat(self) -> str:
        """One short phrase for the report's forecast line: ratio, calibration, form agreement."""
        cov = "uncalibrated" if self.coverage is None else f"benchmark coverage {self.coverage:.0%}"
        text = f"{self.ratio:.1f}x beyond the largest rung, {cov}"
        if self.form_limited:
            text = f"{text}; form-limited: the forms agree only up to {self.trusted_ratio:.1f}x"
        else:
            text = f"{text}; forms agree"
        if self.misses_largest_rung:
            text += f"; the law misses the largest rung by {self.largest_rung_miss:.0%} of the rungs' range"
        return text

    def warning(self, label: str) -> str | None:
        """One line when the benchmark's coverage at this ratio is below LOW_COVERAGE."""
        if not self.low_coverage:
            return None
        return (
            f"warning: {label}: {self.ratio:.0f}x beyond the largest rung, where the benchmark's "
            f"95% intervals covered only {self.coverage:.0%} (docs/forecasting.md)"
        )


def far_backtest(form: str, N, y, *, higher_is_better=False, bounded=False, se=None, chance=None):
    """Log errors of every later rung from fits on each cutoff, and how far each reached:
    (errors, ln ratios), both flat arrays (empty with fewer than MIN_RUNGS + 1 rungs)."""
    N, y = np.asarray(N, float), np.asarray(y, float)
    rungs = np.unique(N)
    cuts = rungs[MIN_RUNGS - 1 : -1]
    if cuts.size == 0:
        return np.empty(0), np.empty(0)
    q, _ = fitted_quantity("powerlaw" if form in CLOSED_FORMS else form, y, higher_is_better, bounded)
    if form in CLOSED_FORMS:
        fits = [_closed_fit(form, N[N <= c], y[N <= c], higher_is_better, bounded, chance) for c in cuts]
        predict_log_q = [f.log_q for f in fits]
    else:
        mask = np.stack([N <= c for c in cuts])
        fits = fit_many(
            form, N, np.repeat(y[None], cuts.size, 0), mask, higher_is_better=higher_is_better,
            bounded=bounded, se=None if se is None else np.repeat(np.asarray(se, float)[None], cuts.size, 0),
            bootstrap=0, polish=0,
        )  # fmt: skip
        predict_log_q = [lambda n, f=f: _log_q(f, n) for f in fits]
    errs, rhos = [], []
    for c, p in zip(cuts, predict_log_q, strict=True):
        later = N > c
        errs.append(p(N[later]) - np.log(q[later]))
        rhos.append(np.log(N[later] / c))
    return np.concatenate(errs), np.concatenate(rhos)


@dataclass
class LogLinear:
    """The metric itself linear in log N (y = a + b·ln N): ordinary least squares with Student-t
    draws. Accuracies often climb like this over a decade or two; it is a third credible form."""

    coef: np.ndarray
    cov: np.ndarray  # of coef, per unit residual variance
    s2: float
    df: int
    hib: bool
    bounded: bool

    @classmethod
    def fit(cls, N, y, higher_is_better: bool, bounded: bool) -> LogLinear:
        X = np.stack([np.ones(len(N)), np.log(N)], 1)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        df = len(N) - 2
        s2 = float(((X @ coef - y) ** 2).sum() / max(df, 1))
        return cls(coef, np.linalg.pinv(X.T @ X), s2, df, higher_is_better, bounded)

    def log_q(self, N) -> np.ndarray:
        return self._to_log_q(self.coef[0] + self.coef[1] * np.log(np.asarray(N, float)))

    def draws(self, N: float, n: int, rng) -> np.ndarray:
        if self.df <= 0:
            return np.empty(0)
        s2 = self.s2 * self.df / rng.chisquare(self.df, n)
        x = np.array([1.0, math.log(N)])
        var = s2 * (1.0 + x @ self.cov @ x)
        return self._to_log_q(x @ self.coef + np.sqrt(var) * rng.standard_normal(n))

    def _to_log_q(self, v) -> np.ndarray:
        q = 1.0 - v if (self.hib and self.bounded) else v
        return np.log(np.maximum(q, 1e-6))


def _closed_fit(form: str, N, y, hib: bool, bounded: bool, chance: float | None) -> LogLinear | Emergence:
    if form == LOGLINEAR:
        return LogLinear.fit(N, y, hib, bounded)
    return Emergence.fit(N, y, float(chance))


def _closed_usable(form: str, N, hib: bool, bounded: bool, chance: float | None) -> bool:
    """A closed-form form needs MIN_RUNGS rungs; the emergence form an accuracy with a chance level."""
    if np.unique(N).size < MIN_RUNGS:
        return False
    if form == EMERGENCE:
        return hib and bounded and chance is not None and 0.0 <= chance < 1.0
    return form == LOGLINEAR


def _log_q(f: Fit, N) -> np.ndarray:
    return _FORMS[f.form].model(np.asarray(f.theta), _cols(f.form, np.asarray(N, float), None, f.x0))[0]


def _boot_log_q(f: Fit, N: float) -> np.ndarray:
    if not f.boot:
        return np.empty(0)
    cols = _cols(f.form, np.atleast_1d(float(N)), None, f.x0)
    return _FORMS[f.form].model(np.asarray(f.boot), cols)[0][:, 0] + np.asarray(f.noise)


@dataclass
class _Credible:
    """The credible forms of one series at one target: each form's log-quantity there (`centre`) and
    its draws (`boot`); `fits` the size laws (with their bootstrap), `closed` the closed-form fits."""

    fits: dict[str, Fit]
    closed: dict
    centre: dict[str, float]
    boot: dict[str, np.ndarray]

    def to_metric(self, log_q) -> np.ndarray:
        return _to_metric(next(iter(self.fits.values())), np.exp(log_q))


def _credible(N, y, target, forms, kw, bootstrap, seed, rng, chance) -> _Credible:
    fits: dict[str, Fit] = {}
    for form in (f for f in forms if f in SIZE_LAWS):
        try:
            fits[form] = fit_many(form, N, y[None], **kw, bootstrap=bootstrap, seed=seed)[0]
        except FitError:
            continue
    if not fits:
        raise FitError("no size law can be fitted to this series")
    centre = {form: float(_log_q(f, [target])[0]) for form, f in fits.items()}
    boot = {form: _boot_log_q(f, target) for form, f in fits.items()}
    closed = {}
    hib, bounded = kw["higher_is_better"], kw["bounded"]
    for form in (f for f in forms if f in CLOSED_FORMS):
        if _closed_usable(form, N, hib, bounded, chance):
            m = closed[form] = _closed_fit(form, N, y, hib, bounded, chance)
            centre[form], boot[form] = float(m.log_q([target])[0]), m.draws(target, bootstrap, rng)
    return _Credible(fits, closed, centre, boot)


def _scaled_errors(forms, N, y, kw, chance, rho_t: float) -> dict[str, float]:
    """Each form's far-backtest log error per unit of ln(ratio), weighted toward distances like the
    target's (a form without a backtest is absent)."""
    scaled = {}
    for form in forms:
        e, rho = far_backtest(form, N, y, **kw, chance=chance)
        if e.size:
            w = np.minimum(rho / rho_t, 1.0)
            scaled[form] = float(np.sqrt(np.sum(w * (e / rho) ** 2) / np.sum(w)))
    return scaled


def _mixture(c: _Credible, weights, kappa: float, rho_t: float, bootstrap: int, rng, tail: float):
    """The interval's ends in log space: the forms' draws mixed by weight, widened by the
    extrapolation error kappa * ln(ratio)."""
    draws = []
    for form in c.centre:
        b = c.boot[form] if c.boot[form].size else np.full(bootstrap, c.centre[form])
        draws.append(rng.choice(b, size=max(1, round(weights[form] * 4 * bootstrap)), replace=True))
    logq = np.concatenate(draws)
    logq = logq + kappa * rho_t * rng.standard_normal(logq.size)
    return np.percentile(logq, [tail, 100 - tail])


def _per_form(c: _Credible, weights, scaled, tail: float) -> list[FormForecast]:
    out = []
    for form in c.centre:
        v, a, b = c.to_metric([c.centre[form], *_pct(c.boot[form], tail)])
        out.append(
            FormForecast(form, float(v), float(min(a, b)), float(max(a, b)), weights[form], scaled.get(form))
        )
    return out


def _intervals_at(c: _Credible, bootstrap: int, rng, tail: float):
    """n -> each form's interval at size n (for how far the forms' intervals keep overlapping)."""

    def intervals(n: float) -> list[FormForecast]:
        out = [
            FormForecast(k, math.nan, *(float(a[0]) for a in predict(f, n)[1:]), 0.0, None)
            for k, f in c.fits.items()
        ]
        for k, m in c.closed.items():
            if m.df > 0:
                lo_hi = c.to_metric(np.percentile(m.draws(n, bootstrap, rng), [tail, 100 - tail]))
                out.append(FormForecast(k, math.nan, float(min(lo_hi)), float(max(lo_hi)), 0.0, None))
        return out

    return intervals


def forecast(
    N,
    y,
    target: float,
    *,
    higher_is_better=False,
    bounded=False,
    se=None,
    bootstrap=BOOTSTRAP,
    seed=0,
    forms: tuple[str, ...] | None = None,
    chance: float | None = None,
) -> Forecast:
    """The averaged forecast at `target` with an interval that carries form uncertainty.
    `chance`: an accuracy's guessing level, which the emergence form needs (None: not used)."""
    forms = FORMS_AVERAGED if forms is None else forms
    chance = None if chance is None or not math.isfinite(chance) else float(chance)
    N, y = np.asarray(N, float).ravel(), np.asarray(y, float).ravel()
    se = None if se is None else np.asarray(se, float).ravel()
    kw = {"higher_is_better": higher_is_better, "bounded": bounded, "se": se}
    rng = np.random.default_rng(seed)
    c = _credible(N, y, target, forms, kw, bootstrap, seed, rng, chance)
    ratio = float(target / N.max())
    rho_t = math.log(max(ratio, 1.0 + 1e-9))
    scaled = _scaled_errors(c.centre, N, y, kw, chance, rho_t)
    weights = _weights(list(c.centre), scaled)
    mu = sum(weights[k] * c.centre[k] for k in c.centre)
    kappa = KAPPA_NO_BACKTEST
    if scaled:
        kappa = max(KAPPA_FLOOR, sum(weights[k] * scaled.get(k, 0.0) for k in c.centre))
    tail = (1 - LEVEL) / 2 * 100
    vals = c.to_metric([mu, *_mixture(c, weights, kappa, rho_t, bootstrap, rng, tail)])
    value, lo, hi = float(vals[0]), float(min(vals[1:])), float(max(vals[1:]))
    means, noise = _rung_means(N, y), _measurement_noise(N, y, se)  # for the bound and the miss
    value, lo, hi = _no_worse_than_the_worst_rung(means, noise, higher_is_better, value, lo, hi)
    per_form = _per_form(c, weights, scaled, tail)
    agree = _overlap(per_form)
    trusted = ratio if agree else _trusted_ratio(_intervals_at(c, bootstrap, rng, tail), N.max(), target)
    best = max(weights, key=weights.get)
    miss = _largest_rung_miss(c, weights, float(N.max()), means, noise)
    why = (
        "forms averaged by far-looking backtest"
        if scaled
        else "no backtest (needs at least 4 rungs): forms weighted equally, three-rung width"
    )
    return Forecast(
        value, lo, hi, best, why, ratio, agree, trusted, calibrated_coverage(ratio), per_form, miss
    )  # fmt: skip


def _largest_rung_miss(
    c: _Credible, weights: dict[str, float], largest: float, means: np.ndarray, noise: float
) -> float:
    """How far the averaged law passes from the largest fitted rung (its mean), as a share of the
    range of the rungs' means, or of their noise where that is larger (a flat, noisy series has no
    range to speak of; nor has one flat to a millionth): a rung the robust fits treated as an
    outlier is often the first sign of a bend the forecast then misses."""
    resolution = 1e-6 * float(np.abs(means).mean())  # below any eval's resolution: rounding
    scale = max(float(np.ptp(means)), noise, resolution)
    if not scale > 0:
        return 0.0
    log_q = {k: float(_log_q(f, [largest])[0]) for k, f in c.fits.items()}
    log_q |= {k: float(m.log_q([largest])[0]) for k, m in c.closed.items()}
    law = float(c.to_metric([sum(weights[k] * log_q[k] for k in c.centre)])[0])
    return float(abs(law - float(means[-1])) / scale)


def forecast_points(
    points: dict, target: float, *, higher_is_better: bool, bounded: bool, seed=0, chance: float | None = None
) -> Forecast:
    """`forecast` from a report series' points (columns params, value and, where known, se)."""
    N, y = np.asarray(points["params"], float), np.asarray(points["value"], float)
    se = np.asarray(points.get("se") or [math.nan] * len(N), float)
    ok = np.isfinite(N) & np.isfinite(y) & (N > 0)
    se = se[ok] if np.all(np.isfinite(se[ok]) & (se[ok] > 0)) else None
    return forecast(
        N[ok],
        y[ok],
        target,
        higher_is_better=higher_is_better,
        bounded=bounded,
        se=se,
        seed=seed,
        chance=chance,
    )


def _no_worse_than_the_worst_rung(
    means: np.ndarray,
    noise: float,
    higher_is_better: bool,
    value: float,
    lo: float,
    hi: float,
) -> tuple[float, float, float]:
    """A prior from size ladders: a model larger than every fitted rung is not, in expectation,
    worse than the worst of them (by its mean over repeats); its measurement may be, by its noise.
    So the value is bounded by the worst rung and the interval's worse end by that less the noise:
    the rungs' scatter about a line in log N at its Student-t quantile (few rungs say little about
    the noise), and at least the eval's own standard error at the normal quantile.
    docs/forecasting.md, session 14: without the noise term, near-chance series of a fresh ladder
    landed below the bound."""
    worst = float(means.min() if higher_is_better else means.max())
    if higher_is_better:
        return max(value, worst), max(lo, worst - noise), max(hi, worst)
    return min(value, worst), min(lo, worst), min(hi, worst + noise)


def _rung_means(N: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each size's mean over its repeats, smallest size first."""
    _, rung = np.unique(N, return_inverse=True)
    return np.bincount(rung, weights=y) / np.bincount(rung)


def _measurement_noise(N: np.ndarray, y: np.ndarray, se: np.ndarray | None) -> float:
    """How far one measurement may stray: the rungs' scatter about a line in log N at its Student-t
    quantile (few rungs say little about the noise), and at least the eval's own standard error at
    the normal quantile."""
    line = LogLinear.fit(N, y, False, False)  # its residual variance is the scatter
    noise = math.sqrt(line.s2) * student_t.ppf(0.5 + LEVEL / 2, line.df) if line.df > 0 else 0.0
    if se is not None:
        noise = max(noise, float(np.max(se)) * student_t.ppf(0.5 + LEVEL / 2, np.inf))
    return noise


def _pct(b: np.ndarray, tail: float) -> list[float]:
    return list(np.percentile(b, [tail, 100 - tail])) if b.size else [math.nan, math.nan]


def _weights(forms: list[str], scaled: dict[str, float]) -> dict[str, float]:
    if len(scaled) < len(forms):
        return {k: 1.0 / len(forms) for k in forms}
    inv = {k: 1.0 / max(scaled[k], 1e-4) ** 2 for k in forms}
    total = sum(inv.values())
    return {k: v / total for k, v in inv.items()}


def _overlap(forms: list[FormForecast]) -> bool:
    """Whether every two forms' own intervals overlap (forms without an interval are not judged)."""
    ivs = [(f.lo, f.hi) for f in forms if np.isfinite([f.lo, f.hi]).all()]
    return all(a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(ivs) for b in ivs[i + 1 :])


def _trusted_ratio(intervals, largest: float, target: float) -> float:
    """The furthest ratio (on a grid up to the target) before the forms' own intervals part."""
    trusted = 1.0
    for n in np.geomspace(largest, target, 25):
        if not _overlap(intervals(n)):
            break
        trusted = float(n / largest)
    return trusted


def calibrated_coverage(ratio: float, path: Path = CALIBRATION_FILE) -> float | None:
    """The benchmark's coverage of these 95% intervals at this extrapolation ratio (None: no data)."""
    if not path.is_file():
        return None
    for b in json.loads(path.read_text())["bins"]:
        if b["ratio_from"] <= ratio < b["ratio_to"]:
            return float(b["coverage"])
    return None
