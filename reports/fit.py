"""Scaling-law fits: robust (Huber) log-space fits from a grid of starts, with bootstrap.

Forms (as in the scaling-law literature: Kaplan et al. 2020, Hoffmann et al. 2022):
- powerlaw    y = a·N^b, on the value itself;
- saturating  q = c + a·N^(−b), on q = 1 − value for bounded higher-is-better metrics,
  otherwise on the value (a lower-is-better quantity);
- chinchilla  L(N, D) = E + A/N^α + B/D^β over every checkpoint of every rung.

Every form is fitted as log q against a log-sum-exp of linear terms, with a *summed*
Huber loss (a mean-reduced one made the original Chinchilla fit stop early), by scipy's
L-BFGS-B from each start of a grid. Bootstrap refits are warm-started from the full fit
and run batched (reports.lbfgs), since they are thousands of tiny problems.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import minimize

from reports.lbfgs import minimize_batch

FORMS = ("powerlaw", "saturating", "chinchilla")
MIN_RUNGS = 3
LEVEL = 0.95


class FitError(ValueError):
    """The data cannot be fitted with this form (too few rungs, non-positive values, ...)."""


# --------------------------------------------------------------------------- forms
# A form maps internal parameters theta (..., k) and features cols (each (n,)) to the
# log-prediction p (..., n) and its k partial derivatives, each (..., n). Size laws use
# x = log N − x0 (centred, so intercept and exponent are not tangled); Chinchilla uses
# log N and log D as they are, so that its published grid of starts means what it says.


def _softmax_lse(*z):
    """log Σ e^z and the softmax weights (its derivatives), stable for large z."""
    m = np.maximum.reduce(z)
    e = [np.exp(zi - m) for zi in z]
    s = sum(e)
    return m + np.log(s), [ei / s for ei in e]


def _powerlaw(theta, cols):
    (x,) = cols
    la, b = theta[..., 0:1], theta[..., 1:2]
    p = la + b * x
    return p, [np.ones_like(p), np.broadcast_to(x, p.shape)]


def _saturating(theta, cols):
    (x,) = cols
    la, b, lc = theta[..., 0:1], theta[..., 1:2], theta[..., 2:3]
    p, (w, wc) = _softmax_lse(la - b * x, lc + 0 * x)
    return p, [w, -w * x, wc]


def _chinchilla(theta, cols):
    lN, lD = cols
    a, b, e, al, be = (theta[..., i : i + 1] for i in range(5))
    p, (wn, wd, we) = _softmax_lse(a - al * lN, b - be * lD, e + 0 * lN)
    return p, [wn, wd, we, -wn * lN, -wd * lD]


@dataclass(frozen=True)
class Form:
    name: str
    theta: tuple[str, ...]  # internal parameter names
    model: object
    lower: tuple[float, ...]
    upper: tuple[float, ...]


_FORMS = {
    "powerlaw": Form("powerlaw", ("log_a0", "b"), _powerlaw, (-np.inf, -10.0), (np.inf, 10.0)),
    # b ≥ 0: the quantity decreases with size; c = e^lc ≥ 0 is the floor it saturates to.
    "saturating": Form(
        "saturating", ("log_a0", "b", "log_c"), _saturating, (-np.inf, 0.0, -30.0), (np.inf, 10.0, np.inf)
    ),
    # α, β ≥ 0: more parameters or data never hurt in this form.
    "chinchilla": Form(
        "chinchilla",
        ("a", "b", "e", "alpha", "beta"),
        _chinchilla,
        (-np.inf,) * 3 + (0.0, 0.0),
        (np.inf,) * 5,
    ),
}


def chinchilla_grid() -> np.ndarray:
    """The Chinchilla / Epoch replication grid: 5^5 = 3,125 starts.

    α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 20} (np.arange(0, 25, 5),
    the stop exclusive, as in the replication's 3,125-start count).
    """
    ab = np.arange(0, 25, 5.0)
    ee = np.arange(-1, 1.01, 0.5)
    ex = np.arange(0, 2.01, 0.5)
    return np.array(list(itertools.product(ab, ab, ee, ex, ex)))


def _size_grid(form: str, logq: np.ndarray) -> np.ndarray:
    """Data-scaled starts for the size laws (few parameters: a small grid is plenty)."""
    mid = float(np.median(logq))
    if form == "powerlaw":
        return np.array(
            [[mid + da, b] for da in (-1.0, 0.0, 1.0) for b in (-1.0, -0.3, -0.1, 0.0, 0.1, 0.3, 1.0)]
        )
    qmin, qmed = float(np.exp(logq.min())), float(np.exp(mid))
    starts = []
    for frac in (1e-3, 0.3, 0.6, 0.9):
        c = frac * qmin
        for b in (0.05, 0.2, 0.5, 1.0, 2.0):
            starts.append([math.log(max(qmed - c, 1e-3 * qmed)), b, math.log(c)])
    return np.array(starts)


# ------------------------------------------------------------------------ objective


def _objective(form: Form, theta, cols, logq, w, delta):
    """Summed Huber loss of the log residuals, divided by δ (same minimiser, O(1) scale
    for the optimiser's tolerances), and its gradient. Broadcasts over a batch axis."""
    p, J = form.model(theta, cols)
    r = p - logq
    a = np.abs(r)
    loss = (w * np.where(a <= delta, 0.5 * r * r / delta, a - 0.5 * delta)).sum(-1)
    psi = w * np.clip(r / delta, -1.0, 1.0)
    return loss, np.stack([(psi * dj).sum(-1) for dj in J], -1)


def huber_loss(r: np.ndarray, delta: float) -> float:
    """Summed Huber loss (scipy.special.huber convention)."""
    a = np.abs(r)
    return float(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum())


def _objective_scipy(theta, form, cols, logq, w, delta):
    return _objective(form, theta, cols, logq, w, delta)  # scipy passes theta first


def _fit_theta(form: Form, cols, logq, delta, starts) -> np.ndarray:
    """L-BFGS from every start, then scipy's L-BFGS-B polishes the best few.

    All starts run at once in the batched L-BFGS: 3,125 scipy calls spend most of their
    time in per-call Python overhead. The polish runs with tight tolerances so that the
    answer does not depend on where the screening stopped.
    """
    w = np.ones_like(logq)
    lower, upper = np.array(form.lower), np.array(form.upper)
    x, f = minimize_batch(
        lambda t, rows: _objective(form, t, cols, logq, w, delta), starts, lower, upper, gtol=1e-6, ftol=1e-10
    )
    bounds = [
        (None if np.isinf(lo) else lo, None if np.isinf(hi) else hi)
        for lo, hi in zip(lower, upper, strict=True)
    ]
    best = None
    for i in np.argsort(np.where(np.isfinite(f), f, np.inf))[:3]:
        res = minimize(
            _objective_scipy,
            x[i],
            args=(form, cols, logq, w, delta),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000},
        )
        if best is None or res.fun < best.fun:
            best = res
    return best.x


# ------------------------------------------------------------------------- results


@dataclass
class Fit:
    """One fitted law. `params` are the natural ones (powerlaw a, b; saturating a, b, c;
    chinchilla E, A, B, alpha, beta); `theta`/`boot` are the internal ones, kept so that
    predictions with intervals can be made later from fits.json alone."""

    form: str
    params: dict[str, float]
    ci: dict[str, list[float]]
    loss: float
    huber_delta: float
    n_points: int
    n_rungs: int
    target: str  # "value" or "1 - value": what was fitted in log space
    x0: float  # centre of log N for size laws
    theta: list[float]
    r2_log: float
    residuals: list[float]  # log(pred) − log(observed), in input order
    boot: list[list[float]] = field(default_factory=list)
    extrapolation: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Fit:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _natural(form: str, theta: np.ndarray, x0: float) -> dict[str, np.ndarray]:
    """Internal theta (..., k) -> natural parameters."""
    t = np.asarray(theta, float)
    if form == "powerlaw":
        return {"a": np.exp(t[..., 0] - t[..., 1] * x0), "b": t[..., 1]}
    if form == "saturating":
        return {"a": np.exp(t[..., 0] + t[..., 1] * x0), "b": t[..., 1], "c": np.exp(t[..., 2])}
    return {
        "E": np.exp(t[..., 2]),
        "A": np.exp(t[..., 0]),
        "B": np.exp(t[..., 1]),
        "alpha": t[..., 3],
        "beta": t[..., 4],
    }


def fitted_quantity(form: str, y, higher_is_better: bool) -> tuple[np.ndarray, str]:
    """The quantity fitted in log space (must be > 0) and its name: the value itself, or
    1 − value for a bounded higher-is-better metric under a law that decreases."""
    y = np.asarray(y, float)
    if form == "powerlaw":
        return y, "value"
    if not higher_is_better:
        return y, "value"
    if np.all((y >= 0) & (y <= 1)):
        return 1.0 - y, "1 - value"
    raise FitError(
        f"{form} fits a quantity that decreases with scale; this higher-is-better metric has values "
        "outside [0, 1], so 1 − value is not an error rate (give bounded metrics as fractions)"
    )


def _cols(form: str, N, D, x0):
    lN = np.log(np.asarray(N, float))
    if form == "chinchilla":
        return (lN, np.log(np.asarray(D, float)))
    return (lN - x0,)


def _from_target(target: str, q):
    return 1.0 - q if target == "1 - value" else q


# ---------------------------------------------------------------------------- API


def fit(
    form: str,
    N,
    y,
    D=None,
    *,
    higher_is_better: bool = False,
    huber_delta: float = 1e-3,
    bootstrap: int = 1000,
    seed: int = 0,
    grid: np.ndarray | None = None,
    extrapolate: bool = True,
) -> Fit:
    """Fit `form` to values y at sizes N (and data seen D, for chinchilla).

    Bootstrap resamples rungs (distinct N) for the size laws and points for chinchilla;
    `bootstrap=0` skips intervals. Raises FitError when the data cannot be fitted.
    """
    if form not in _FORMS:
        raise FitError(f"unknown fit form {form!r}; known forms: {', '.join(FORMS)}")
    spec = _FORMS[form]
    N, y = np.asarray(N, float).ravel(), np.asarray(y, float).ravel()
    if form == "chinchilla":
        if D is None:
            raise FitError("chinchilla needs D (clips or tokens seen) for every point")
        D = np.asarray(D, float).ravel()
    q, target = fitted_quantity(form, y, higher_is_better)
    bad = ~np.isfinite(q) | (q <= 0) | ~(N > 0) | (False if D is None else ~(D > 0))
    if bad.any():
        raise FitError(
            f"{int(bad.sum())} non-positive or non-finite value(s) of the fitted quantity ({target}) cannot be fitted in log space"
        )
    rungs = np.unique(N)
    if rungs.size < MIN_RUNGS:
        raise FitError(f"needs at least {MIN_RUNGS} rungs, got {rungs.size}")

    logq = np.log(q)
    x0 = float(np.log(rungs).mean()) if form != "chinchilla" else 0.0
    cols = _cols(form, N, D, x0)
    if grid is None:
        grid = chinchilla_grid() if form == "chinchilla" else _size_grid(form, logq)
    theta = _fit_theta(spec, cols, logq, huber_delta, grid)

    p, _ = spec.model(theta, cols)
    resid = p - logq
    r2 = 1.0 - float((resid**2).sum() / max(((logq - logq.mean()) ** 2).sum(), 1e-300))
    nat = {k: float(v) for k, v in _natural(form, theta, x0).items()}
    out = Fit(
        form,
        nat,
        {},
        huber_loss(resid, huber_delta),
        huber_delta,
        int(N.size),
        int(rungs.size),
        target,
        x0,
        [float(t) for t in theta],
        r2,
        [float(r) for r in resid],
    )

    if bootstrap:
        boot = _bootstrap(spec, cols, logq, N, huber_delta, theta, bootstrap, seed)
        out.boot = boot.tolist()
        lo, hi = (1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100
        out.ci = {
            k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
            for k, v in _natural(form, boot, x0).items()
        }
    if extrapolate:
        out.extrapolation = _leave_largest_out(
            form, N, y, D, higher_is_better, huber_delta, grid if form == "chinchilla" else None
        )
    return out


def _bootstrap(spec: Form, cols, logq, N, delta, theta, n, seed) -> np.ndarray:
    """n refits on resampled data, as integer weights per point, warm-started from theta."""
    rng = np.random.default_rng(seed)
    if spec.name == "chinchilla":  # resample points
        idx = rng.integers(0, N.size, (n, N.size))
        W = np.zeros((n, N.size))
        np.add.at(W, (np.arange(n)[:, None], idx), 1.0)
    else:  # resample rungs, each with all of its points
        rungs, which = np.unique(N, return_inverse=True)
        pick = rng.integers(0, rungs.size, (n, rungs.size))
        counts = np.zeros((n, rungs.size))
        np.add.at(counts, (np.arange(n)[:, None], pick), 1.0)
        W = counts[:, which]
        # A resample with fewer distinct rungs than parameters cannot pin the law down:
        # drop it rather than report an arbitrary point of a flat valley.
        W = W[(counts > 0).sum(1) >= len(spec.theta)]

    def fun(x, rows):
        return _objective(spec, x, cols, logq, W[rows], delta)

    # Warm starts converge in tens of iterations; the cap only trims a slow tail of
    # resamples sitting on a Huber kink, which moves the percentiles by nothing visible.
    x, _ = minimize_batch(
        fun, np.tile(theta, (len(W), 1)), np.array(spec.lower), np.array(spec.upper), maxiter=300
    )
    return x


def _leave_largest_out(form, N, y, D, higher_is_better, delta, grid) -> dict:
    """Fit without the largest rung, predict it: the honest test of a scaling law."""
    largest = N.max()
    keep = N < largest
    base = {"held_out_N": float(largest)}
    try:
        f = fit(
            form,
            N[keep],
            y[keep],
            None if D is None else D[keep],
            higher_is_better=higher_is_better,
            huber_delta=delta,
            bootstrap=0,
            grid=grid,
            extrapolate=False,
        )
    except FitError as e:
        return base | {"error": f"not computed: without the largest rung, {e}"}
    held = ~keep
    if form == "chinchilla":
        last = np.flatnonzero(held)[np.argmax(D[held])]  # the held-out rung's final checkpoint
        pred = float(predict(f, N[last], D[last])[0][0])
        actual = float(y[last])
        all_pred = predict(f, N[held], D[held])[0]
        mean_abs = float(np.mean(np.abs(all_pred - y[held]) / np.abs(y[held])))
    else:
        pred = float(predict(f, largest)[0][0])
        actual = float(np.mean(y[held]))
        mean_abs = abs(pred - actual) / abs(actual)
    return base | {
        "predicted": pred,
        "actual": actual,
        "rel_error": (pred - actual) / abs(actual),
        "mean_abs_rel_error": mean_abs,
    }


def predict(f: Fit | dict, N, D=None, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, lo, hi) at sizes N (and D for chinchilla), in the metric's own units.

    The interval comes from the bootstrap fits (NaN when there were none).
    """
    f = Fit.from_dict(f) if isinstance(f, dict) else f
    spec = _FORMS[f.form]
    N = np.atleast_1d(np.asarray(N, float))
    if f.form == "chinchilla" and D is None:
        raise FitError("a chinchilla prediction needs D (clips or tokens seen) as well as N")
    cols = _cols(f.form, N, None if D is None else np.broadcast_to(np.asarray(D, float), N.shape), f.x0)
    value = _from_target(f.target, np.exp(spec.model(np.asarray(f.theta), cols)[0]))
    if not f.boot:
        nan = np.full_like(value, np.nan)
        return value, nan, nan
    samples = _from_target(f.target, np.exp(spec.model(np.asarray(f.boot), cols)[0]))  # (B, n)
    lo, hi = np.percentile(samples, [(1 - level) / 2 * 100, (1 + level) / 2 * 100], axis=0)
    return value, np.minimum(lo, hi), np.maximum(lo, hi)
