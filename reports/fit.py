"""Scaling-law fits: robust (Huber) log-space fits from a grid of starts, with bootstrap.

Forms (the 4DS paper's "Fitting scaling laws"):
- powerlaw    q = a·N^b;
- saturating  q = c + a·N^(−b), a quantity that falls to a floor c;
- chinchilla  L(N, D) = E + A/N^α + B/D^β over every checkpoint of every rung.

q is what gets fitted in log space (`fitted_quantity`): the value itself, or 1 − value for a
bounded higher-is-better metric (an accuracy's error). A bounded metric's predictions and
intervals are clipped to [0, 1]: no form may forecast an accuracy above 1.

Every form is fitted as log q against a log-sum-exp of linear terms, with a *summed*
Huber loss (a mean-reduced one made the original Chinchilla fit stop early), by the
batched L-BFGS (reports.lbfgs) from each start of a grid, then scipy's L-BFGS-B polishes
the best starts. Many fits at once (backtest windows, simulations) share one batch.

Intervals. Chinchilla resamples its points. The size laws use a parametric bootstrap: new
data are drawn around the fitted curve with the eval noise (a table's `se` column) or, when
that is unknown, with the residual scale, itself drawn from its chi-square posterior so that
few rungs give wide (t-like) intervals; each resample is refitted, and a fresh draw of the
noise is added at the prediction. That makes them *prediction* intervals for the value a
new rung will measure. Resampling rungs instead leaves ~4 distinct rungs of 6 per resample,
too few for a 3-parameter law, and covered badly in simulation (tests/test_forecast.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reports.forms import (
    _FORMS,
    Form,
    _fit_theta,
    _objective,
    _size_grid,
    chinchilla_grid,  # noqa: F401  (re-exported: callers import it from here)
    huber_loss,
)
from reports.law import (  # noqa: F401  (re-exported: callers import them from here)
    FORMS,
    LEVEL,
    MIN_RUNGS,
    SIZE_LAWS,
    Fit,
    FitError,
    _check,
    _cols,
    _natural,
    _to_metric,
    fitted_quantity,
    predict,
)
from reports.lbfgs import minimize_batch

# ---------------------------------------------------------------------------- API


def fit(
    form: str,
    N,
    y,
    D=None,
    *,
    higher_is_better: bool = False,
    bounded: bool = False,
    se=None,
    huber_delta: float = 1e-3,
    bootstrap: int = 1000,
    seed: int = 0,
    grid: np.ndarray | None = None,
    extrapolate: bool = True,
) -> Fit:
    """Fit `form` to values y at sizes N (and data seen D, for chinchilla).

    `se`: eval standard errors of y (metric units), used as weights and as the noise of
    the intervals. `bootstrap=0` skips intervals. Raises FitError when the data cannot be fitted.
    """
    if form not in _FORMS:
        raise FitError(f"unknown fit form {form!r}; known forms: {', '.join(FORMS)}")
    N, y = np.asarray(N, float).ravel(), np.asarray(y, float).ravel()
    if form == "chinchilla":
        if D is None:
            raise FitError("chinchilla needs D (clips or tokens seen) for every point")
        D = np.asarray(D, float).ravel()
        from reports.chinchilla import fit_chinchilla  # it builds on this module's Fit and predict

        return fit_chinchilla(N, D, y, huber_delta, bootstrap, seed, grid, extrapolate)
    out = fit_many(
        form,
        N,
        y[None],
        higher_is_better=higher_is_better,
        bounded=bounded,
        se=None if se is None else np.asarray(se, float).ravel()[None],
        huber_delta=huber_delta,
        bootstrap=bootstrap,
        seed=seed,
        polish=3,
    )[0]
    if extrapolate:
        out.extrapolation = _leave_largest_out(form, N, y, higher_is_better, bounded, se, huber_delta)
    return out


def fit_many(
    form: str,
    N,
    Y,
    mask=None,
    *,
    higher_is_better: bool = False,
    bounded: bool = False,
    se=None,
    huber_delta: float = 1e-3,
    bootstrap: int = 1000,
    seed: int = 0,
    polish: int = 1,
) -> list[Fit]:
    """Fit a size law to T data sets at once: Y (T, n) at shared sizes N (n,); mask (T, n)
    says which points each fit uses (backtest windows). se (T, n) as in `fit`."""
    spec = _FORMS[form]
    N = np.asarray(N, float).ravel()
    d = _LogData.of(form, N, Y, mask, higher_is_better, bounded, se)
    w = d.use.astype(float)
    x0 = float(np.log(np.unique(N)).mean())
    cols = (np.log(N) - x0,)
    starts = np.stack([_size_grid(form, q[u]) for q, u in zip(d.logq, d.use, strict=True)])
    theta = _fit_theta(spec, cols, d.logq, w, d.s, huber_delta, starts, polish)
    p, _ = spec.model(theta, cols)
    df = d.use.sum(1) - len(spec.theta)
    resid = np.where(d.use, p - d.logq, 0.0)
    sigma_hat = np.sqrt((resid**2 / d.s**2).sum(1) / np.maximum(df, 1))  # per fit, in units of s
    boot = noise = None
    if bootstrap:
        boot, noise = _parametric_bootstrap(
            spec, cols, p, w, d.s, d.sig, sigma_hat, df, theta, huber_delta, bootstrap, seed
        )
    fits = []
    for t in range(len(d.logq)):
        f = _one_fit(form, d, t, theta[t], resid[t], huber_delta, x0, bounded)
        if d.sig is not None:
            f.sigma, f.sigma_from = float(np.median(d.sig[t][d.use[t]])), "se"
        elif df[t] > 0:
            f.sigma, f.sigma_from = float(sigma_hat[t]), "residuals"
        if boot is not None and np.isfinite(boot[t]).all():
            f.boot, f.noise = boot[t].tolist(), noise[t].tolist()
            lo, hi = (1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100
            f.ci = {
                k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
                for k, v in _natural(form, boot[t], x0).items()
            }
        elif bootstrap:
            f.notes.append(
                f"no interval: {f.n_points} points leave no degree of freedom to estimate the noise "
                f"of a {len(spec.theta)}-parameter law (give eval standard errors, or more rungs)"
            )
        fits.append(f)
    return fits


@dataclass
class _LogData:
    """T data sets made ready for a batched fit in log space: which points each fit uses, log q
    there (0 elsewhere), the eval noise in log space (se / q, or None), each point's relative
    noise scale s (1 without se), the rungs each fit spans, and what q is."""

    use: np.ndarray  # (T, n) bool
    logq: np.ndarray  # (T, n)
    sig: np.ndarray | None  # (T, n)
    s: np.ndarray  # (T, n)
    rungs: list[int]
    target: str

    @classmethod
    def of(cls, form: str, N: np.ndarray, Y, mask, higher_is_better: bool, bounded: bool, se) -> _LogData:
        """Raises FitError for values the log cannot take, too few rungs, or unusable SEs."""
        Y = np.atleast_2d(np.asarray(Y, float))
        T, n = Y.shape
        use = np.ones((T, n), bool) if mask is None else np.asarray(mask, bool)
        q, target = fitted_quantity(form, np.where(use, Y, 0.5), higher_is_better, bounded)
        bad = _check(q, N) & use
        if bad.any():
            raise FitError(
                f"{int(bad.sum())} non-positive or non-finite value(s) of the fitted quantity ({target}) "
                "cannot be fitted in log space"
            )
        rungs = [np.unique(N[u]).size for u in use]
        if min(rungs) < MIN_RUNGS:
            raise FitError(f"needs at least {MIN_RUNGS} rungs, got {min(rungs)}")
        qu = np.where(use, q, 1.0)
        # Eval noise in log space: se / q. Its relative size weights the points; its level is the noise.
        sig = None if se is None else np.where(use, np.broadcast_to(np.asarray(se, float), (T, n)) / qu, 1.0)
        if sig is not None and not (np.isfinite(sig) & (sig > 0))[use].all():
            raise FitError("every standard error must be a positive number")
        s = (
            np.ones((T, n))
            if sig is None
            else sig / np.array([sig[t][use[t]].mean() for t in range(T)])[:, None]
        )
        return cls(use, np.log(qu), sig, s, rungs, target)


def _one_fit(
    form: str, d: _LogData, t: int, theta, resid, huber_delta: float, x0: float, bounded: bool
) -> Fit:
    """Fit t of a batch: its parameters, loss and R² over the points it used (intervals added after)."""
    u = d.use[t]
    r, lq = resid[u], d.logq[t][u]
    r2 = 1.0 - float((r**2).sum() / max(((lq - lq.mean()) ** 2).sum(), 1e-300))
    return Fit(
        form,
        {k: float(v) for k, v in _natural(form, theta, x0).items()},
        {},
        huber_loss(r, huber_delta),
        huber_delta,
        int(u.sum()),
        int(d.rungs[t]),
        d.target,
        x0,
        [float(v) for v in theta],
        r2,
        [float(v) for v in r],
        bounded=bounded,
    )


def _parametric_bootstrap(spec: Form, cols, p, w, s, sig, sigma_hat, df, theta, delta, n, seed):
    """n refits per fit on data drawn around the fitted curve; returns thetas (T, n, k) (NaN
    where the noise cannot be estimated) and the log-space noise of a new point (T, n)."""
    rng = np.random.default_rng(seed)
    T, npts = p.shape
    if sig is not None:  # known eval noise
        scale = np.broadcast_to(sig[:, None, :], (T, n, npts))
        target = np.broadcast_to(np.array([np.median(sig[t][w[t] > 0]) for t in range(T)])[:, None], (T, n))
    else:  # residual scale, drawn from its posterior: sigma² · df / chi²(df)
        dfc = np.maximum(df, 1)[:, None]
        level = sigma_hat[:, None] * np.sqrt(dfc / rng.chisquare(dfc, (T, n)))
        scale = level[..., None] * s[:, None, :]
        target = level * np.array([np.median(s[t][w[t] > 0]) for t in range(T)])[:, None]
    logq = p[:, None, :] + scale * rng.standard_normal((T, n, npts))
    noise = target * rng.standard_normal((T, n))
    of = np.repeat(np.arange(T), n)
    W, S, L = w[of], s[of], logq.reshape(T * n, npts)

    def fun(x, rows):
        return _objective(spec, x, cols, L[rows], W[rows], delta, S[rows])

    # Warm starts converge in tens of iterations; the cap only trims a slow tail of
    # resamples sitting on a Huber kink, which moves the percentiles by nothing visible.
    x, _ = minimize_batch(
        fun, np.repeat(theta, n, axis=0), np.array(spec.lower), np.array(spec.upper), maxiter=300
    )
    x = x.reshape(T, n, -1)
    if sig is None:
        x[df <= 0] = np.nan
    return x, noise


def _leave_largest_out(form, N, y, hib, bounded, se, delta) -> dict:
    """Fit without the largest rung, predict it: the honest test of a scaling law."""
    largest = N.max()
    keep = N < largest
    base = {"held_out_N": float(largest)}
    try:
        f = fit(
            form,
            N[keep],
            y[keep],
            higher_is_better=hib,
            bounded=bounded,
            se=None if se is None else np.asarray(se, float)[keep],
            huber_delta=delta,
            bootstrap=0,
            extrapolate=False,
        )
    except FitError as e:
        return base | {"error": f"not computed: without the largest rung, {e}"}
    pred = float(predict(f, largest)[0][0])
    actual = float(np.mean(y[~keep]))
    if actual == 0:  # an accuracy of 0 at the largest rung: no relative error to give
        return base | {"error": f"not computed: the largest rung measured 0 (predicted {pred:.3g})"}
    mean_abs = abs(pred - actual) / abs(actual)
    return base | {
        "predicted": pred,
        "actual": actual,
        "rel_error": (pred - actual) / abs(actual),
        "mean_abs_rel_error": mean_abs,
    }


# ------------------------------------------------------------------ backtest, selection


def backtest_many(
    form: str, N, Y, *, se=None, bootstrap: int = 200, seed: int = 0, **kw
) -> dict[str, np.ndarray]:
    """Expanding-window backtest of T data sets Y (T, n) at sizes N: for every k that leaves
    at least MIN_RUNGS rungs to fit, fit on the smallest k rungs and predict rung k + 1.

    Returns arrays (T, W) over the W windows: predicted, lo, hi, actual, and held_N (W,).
    All T·W fits run as one batch.
    """
    N = np.asarray(N, float).ravel()
    Y = np.atleast_2d(np.asarray(Y, float))
    rungs = np.unique(N)
    ks = list(range(MIN_RUNGS, rungs.size))
    T = Y.shape[0]
    empty = np.empty((T, 0))
    if not ks:
        return {"predicted": empty, "lo": empty, "hi": empty, "actual": empty, "held_N": np.empty(0)}
    mask = np.stack([N <= rungs[k - 1] for k in ks])  # (W, n)
    fits = fit_many(
        form,
        N,
        np.repeat(Y, len(ks), axis=0),
        np.tile(mask, (T, 1)),
        se=None if se is None else np.repeat(np.broadcast_to(se, Y.shape), len(ks), axis=0),
        bootstrap=bootstrap,
        seed=seed,
        polish=0,
        **kw,
    )
    out = np.array([[*predict(f, rungs[ks[i % len(ks)]])] for i, f in enumerate(fits)])[..., 0]  # (T·W, 3)
    actual = np.stack([Y[:, N == rungs[k]].mean(1) for k in ks], 1)
    pred, lo, hi = (out[:, j].reshape(T, len(ks)) for j in range(3))
    return {"predicted": pred, "lo": lo, "hi": hi, "actual": actual, "held_N": rungs[ks]}


def backtest(form: str, N, y, **kw) -> dict:
    """One series' backtest: every window, the mean absolute relative error of the
    predictions and the share of held-out rungs inside their 95% interval."""
    b = backtest_many(
        form,
        N,
        np.asarray(y, float)[None],
        **{k: v for k, v in kw.items() if k != "se"},
        se=None if kw.get("se") is None else np.asarray(kw["se"], float)[None],
    )
    pred, lo, hi, actual = (b[k][0] for k in ("predicted", "lo", "hi", "actual"))
    with np.errstate(divide="ignore", invalid="ignore"):  # a rung that measured 0 has no relative error
        rel = np.where(actual != 0, (pred - actual) / np.abs(actual), np.nan)
    has_rel_error = np.isfinite(rel)
    has = np.isfinite(lo)
    inside = (lo <= actual) & (actual <= hi)
    windows = [
        {
            "held_out_N": float(n),
            "fit_rungs": MIN_RUNGS + i,
            "predicted": float(p),
            "lo": float(a),
            "hi": float(z),
            "actual": float(v),
            "rel_error": float(r) if np.isfinite(r) else None,
            "inside": bool(ins) if h else None,
        }
        for i, (n, p, a, z, v, r, ins, h) in enumerate(
            zip(b["held_N"], pred, lo, hi, actual, rel, inside, has, strict=True)
        )
    ]
    return {
        "windows": windows,
        "error": float(np.mean(np.abs(rel[has_rel_error]))) if has_rel_error.any() else None,
        "coverage": float(inside[has].mean()) if has.any() else None,
        "scored_windows": int(has.sum()),
    }


def select_form(errors: dict[str, float | None]) -> tuple[str, str]:
    """The form with the lowest backtest error, and why. Forms listed simplest first; a
    more flexible form must beat the simpler one clearly (by SELECT_MARGIN), since with a few
    windows a lower error can be luck; with no backtest, the simplest form."""
    scored = {k: v for k, v in errors.items() if v is not None and np.isfinite(v)}
    forms = list(errors)
    if not scored:
        return forms[0], "no backtest (needs at least 4 rungs): the simplest form"
    best = forms[0] if forms[0] in scored else min(scored, key=scored.get)
    for form in forms:
        if form in scored and scored[form] < scored[best] * (1 - SELECT_MARGIN):
            best = form
    return best, "lowest backtest error"


SELECT_MARGIN = 0.2
