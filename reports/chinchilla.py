"""The Chinchilla form L(N, D) = E + A/N^α + B/D^β over every checkpoint of every rung: its grid
fit (the replication's 3,125 starts), its point-resampling bootstrap and leave-largest-out test."""

from __future__ import annotations

import numpy as np

from reports.forms import _FORMS, Form, _fit_theta, _objective, chinchilla_grid, huber_loss
from reports.law import LEVEL, MIN_RUNGS, Fit, FitError, _check, _cols, _natural, predict
from reports.lbfgs import minimize_batch


def fit_chinchilla(N, D, y, delta, bootstrap, seed, grid, extrapolate) -> Fit:
    spec = _FORMS["chinchilla"]
    bad = _check(y, N, D)
    if bad.any():
        raise FitError(
            f"{int(bad.sum())} non-positive or non-finite value(s) of the fitted quantity (value) "
            "cannot be fitted in log space"
        )
    rungs = np.unique(N)
    if rungs.size < MIN_RUNGS:
        raise FitError(f"needs at least {MIN_RUNGS} rungs, got {rungs.size}")
    logq = np.log(y)
    cols = _cols("chinchilla", N, D, 0.0)
    grid = chinchilla_grid() if grid is None else grid
    one = np.ones((1, y.size))
    theta = _fit_theta(spec, cols, logq[None], one, one, delta, grid[None])[0]
    p, _ = spec.model(theta, cols)
    resid = p - logq
    r2 = 1.0 - float((resid**2).sum() / max(((logq - logq.mean()) ** 2).sum(), 1e-300))
    out = Fit(
        "chinchilla",
        {k: float(v) for k, v in _natural("chinchilla", theta, 0.0).items()},
        {},
        huber_loss(resid, delta),
        delta,
        int(N.size),
        int(rungs.size),
        "value",
        0.0,
        [float(t) for t in theta],
        r2,
        [float(r) for r in resid],
    )
    if bootstrap:
        boot = _resample_points(spec, cols, logq, delta, theta, bootstrap, seed)
        out.boot = boot.tolist()
        lo, hi = (1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100
        out.ci = {
            k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
            for k, v in _natural("chinchilla", boot, 0.0).items()
        }
    if extrapolate:
        out.extrapolation = leave_largest_out(N, D, y, delta, grid)
    return out


def _resample_points(spec: Form, cols, logq, delta, theta, n, seed) -> np.ndarray:
    """n refits on resampled points (integer weights per point), warm-started from theta."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, logq.size, (n, logq.size))
    W = np.zeros((n, logq.size))
    np.add.at(W, (np.arange(n)[:, None], idx), 1.0)

    def fun(x, rows):
        return _objective(spec, x, cols, logq, W[rows], delta)

    x, _ = minimize_batch(
        fun, np.tile(theta, (n, 1)), np.array(spec.lower), np.array(spec.upper), maxiter=300
    )
    return x


def leave_largest_out(N, D, y, delta, grid) -> dict:
    largest = N.max()
    keep = N < largest
    base = {"held_out_N": float(largest)}
    try:
        f = fit_chinchilla(N[keep], D[keep], y[keep], delta, 0, 0, grid, False)
    except FitError as e:
        return base | {"error": f"not computed: without the largest rung, {e}"}
    held = ~keep
    last = np.flatnonzero(held)[np.argmax(D[held])]  # the held-out rung's final checkpoint
    pred = float(predict(f, N[last], D[last])[0][0])
    actual = float(y[last])
    all_pred = predict(f, N[held], D[held])[0]
    mean_abs = float(np.mean(np.abs(all_pred - y[held]) / np.abs(y[held])))
    return base | {
        "predicted": pred,
        "actual": actual,
        "rel_error": (pred - actual) / abs(actual),
        "mean_abs_rel_error": mean_abs,
    }
