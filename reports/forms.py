"""The scaling-law forms and the robust objective every fit minimises (reports.fit fits them).

A form maps internal parameters theta to a log-prediction and its partial derivatives, so that
many fits (grid starts, bootstrap resamples, backtest windows) run as one batch in
reports.lbfgs; scipy's L-BFGS-B polishes the best starts.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from reports.lbfgs import minimize_batch

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


def _objective(form: Form, theta, cols, logq, w, delta, s=1.0):
    """Summed Huber loss of the log residuals, each divided by its noise scale s (eval
    standard errors, relative to their mean), divided by δ (same minimiser, O(1) scale
    for the optimiser's tolerances), and its gradient. Broadcasts over a batch axis."""
    p, J = form.model(theta, cols)
    r = (p - logq) / s
    a = np.abs(r)
    loss = (w * np.where(a <= delta, 0.5 * r * r / delta, a - 0.5 * delta)).sum(-1)
    psi = w * np.clip(r / delta, -1.0, 1.0) / s
    return loss, np.stack([(psi * dj).sum(-1) for dj in J], -1)


def huber_loss(r: np.ndarray, delta: float) -> float:
    """Summed Huber loss (scipy.special.huber convention)."""
    a = np.abs(r)
    return float(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum())


def _objective_scipy(theta, form, cols, logq, w, delta, s):
    return _objective(form, theta, cols, logq, w, delta, s)  # scipy passes theta first


def _fit_theta(form: Form, cols, logq, w, s, delta, starts, polish: int = 3) -> np.ndarray:
    """Fit T problems at once: logq, w, s (T, n) share cols; starts (T, S, k) -> theta (T, k).

    L-BFGS from every start of every problem runs as one batch (3,125 scipy calls spend most
    of their time in per-call Python overhead); then scipy's L-BFGS-B polishes each problem's
    best `polish` starts with tight tolerances, so the answer does not depend on where the
    screening stopped (polish=0: the screening's best, enough for backtest windows).
    """
    T, S, k = starts.shape
    lower, upper = np.array(form.lower), np.array(form.upper)
    of = np.repeat(np.arange(T), S)  # which problem each start belongs to

    def fun(t, rows):
        return _objective(form, t, cols, logq[of[rows]], w[of[rows]], delta, s[of[rows]])

    x, f = minimize_batch(fun, starts.reshape(T * S, k), lower, upper, gtol=1e-6, ftol=1e-10)
    x, f = x.reshape(T, S, k), np.where(np.isfinite(f), f, np.inf).reshape(T, S)
    bounds = [
        (None if np.isinf(lo) else lo, None if np.isinf(hi) else hi)
        for lo, hi in zip(lower, upper, strict=True)
    ]
    out = x[np.arange(T), np.argmin(f, 1)]
    for t in range(T if polish else 0):
        best = None
        for i in np.argsort(f[t])[:polish]:
            res = minimize(
                _objective_scipy,
                x[t, i],
                args=(form, cols, logq[t], w[t], delta, s[t]),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000},
            )
            if best is None or res.fun < best.fun:
                best = res
        out[t] = best.x
    return out


# --------------------------------------------------------------------- emergence

EMERGENCE_EPS = 0.005  # least share of the way from chance to 1 that the logit is taken of


@dataclass
class Emergence:
    """An accuracy that leaves chance: acc = c + (1 − c)·σ(a + b·ln N), the logistic in log N
    between the chance level c (fixed, the task's guessing accuracy) and 1.

    Near chance the logit climbs linearly in log N while the accuracy hardly moves, then the
    accuracy rises steeply: the emergence that a power law in the error, fitted on near-chance
    rungs, does not see. Far out it is a power law in 1 − acc again (exponent b). Fitted by
    weighted least squares of the logit, each rung weighted by (u(1 − u))² (u the share of the
    way from chance to 1), which is the delta method for an accuracy of constant noise, so the
    noisy logits of near-chance rungs count little; b ≥ 0 (more parameters never hurt). Draws
    are Student-t, as for `reports.uncertainty.LogLinear`.
    """

    coef: np.ndarray  # a, b of the logit in ln N
    cov: np.ndarray  # of coef, per unit residual variance
    s2: float  # residual variance of the logit per unit weight
    df: int
    chance: float
    w_mean: float  # the fitted rungs' mean raw weight (weights are divided by it)

    @classmethod
    def fit(cls, N, y, chance: float) -> Emergence:
        x, (z, w_raw) = np.log(np.asarray(N, float)), _logit_share(y, chance)
        w = w_raw / w_raw.mean()
        X = np.stack([np.ones_like(x), x], 1)
        A = X.T @ (w[:, None] * X)
        coef = np.linalg.solve(A, X.T @ (w * z)) if np.linalg.cond(A) < 1e12 else np.array([z.mean(), 0.0])
        if coef[1] < 0:  # a falling accuracy: flat at the weighted mean
            coef = np.array([float(np.sum(w * z) / w.sum()), 0.0])
        df = len(x) - 2
        s2 = float(np.sum(w * (X @ coef - z) ** 2) / max(df, 1))
        return cls(coef, np.linalg.pinv(A), s2, df, float(chance), float(w_raw.mean()))

    def accuracy(self, N) -> np.ndarray:
        z = self.coef[0] + self.coef[1] * np.log(np.asarray(N, float))
        return self.chance + (1.0 - self.chance) / (1.0 + np.exp(-z))

    def log_q(self, N) -> np.ndarray:
        """log(1 − acc), the error-like quantity the other forms are fitted on."""
        return self._log_q(self.coef[0] + self.coef[1] * np.log(np.asarray(N, float)))

    def draws(self, N: float, n: int, rng) -> np.ndarray:
        if self.df <= 0:
            return np.empty(0)
        x = np.array([1.0, math.log(N)])
        z = float(x @ self.coef)
        u = 1.0 / (1.0 + math.exp(-z))
        w = max((u * (1.0 - u)) ** 2, 1e-12) / self.w_mean  # as the fitted rungs' weights
        s2 = self.s2 * self.df / rng.chisquare(self.df, n)
        var = s2 * (x @ self.cov @ x + 1.0 / w)
        return self._log_q(z + np.sqrt(var) * rng.standard_normal(n))

    def _log_q(self, z) -> np.ndarray:
        # 1 − acc = (1 − c)·σ(−z); log σ(−z) = −softplus(z), stable for large |z|
        return math.log(1.0 - self.chance) - np.logaddexp(0.0, z)


def _logit_share(y, chance: float) -> tuple[np.ndarray, np.ndarray]:
    """The logit of u = (acc − c) / (1 − c), clipped into (0, 1), and its weight (u(1 − u))²."""
    u = np.clip((np.asarray(y, float) - chance) / (1.0 - chance), EMERGENCE_EPS, 1.0 - EMERGENCE_EPS)
    return np.log(u / (1.0 - u)), (u * (1.0 - u)) ** 2
