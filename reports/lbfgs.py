"""A batched, box-constrained L-BFGS in numpy: many small independent problems at once.

Bootstrap resamples are thousands of tiny fits; scipy's per-call overhead dominates
them, so here every array carries a leading batch axis (B) and each problem keeps its
own memory, step and convergence flag. Bounds are kept by projection.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# fun(x (b, k), rows (b,)) -> (f (b,), g (b, k)); `rows` says which problems x belongs to.
BatchObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _two_loop(g, S, Y, rho, gamma):
    """Apply each problem's inverse-Hessian estimate to g. S, Y (m, b, k) newest first."""
    q = g.copy()
    alpha = np.zeros(rho.shape)
    for i in range(len(S)):
        alpha[i] = rho[i] * (S[i] * q).sum(1)
        q -= alpha[i, :, None] * Y[i]
    r = gamma[:, None] * q
    for i in reversed(range(len(S))):
        beta = rho[i] * (Y[i] * r).sum(1)
        r += S[i] * (alpha[i] - beta)[:, None]
    return r


def minimize_batch(
    fun: BatchObjective,
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    memory: int = 10,
    maxiter: int = 1000,
    gtol: float = 1e-10,
    ftol: float = 1e-12,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise B independent problems from x0 (B, k) -> (x (B, k), f (B,))."""
    x = np.clip(np.array(x0, float), lower, upper)
    B, k = x.shape
    f, g = fun(x, np.arange(B))
    S = np.zeros((memory, B, k))  # ring buffers; a zero pair (rho = 0) is a no-op
    Y = np.zeros((memory, B, k))
    rho = np.zeros((memory, B))
    gamma = np.ones(B)
    fresh = np.ones(B, bool)  # no curvature yet: take a cautious first step
    active = np.ones(B, bool)
    for it in range(maxiter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        xa, ga, fa = x[rows], g[rows], f[rows]
        free = ~(((xa <= lower) & (ga > 0)) | ((xa >= upper) & (ga < 0)))
        pg = ga * free
        done = np.abs(pg).max(1) <= gtol
        active[rows[done]] = False
        keep = ~done
        rows, xa, ga, fa, free, pg = rows[keep], xa[keep], ga[keep], fa[keep], free[keep], pg[keep]
        if rows.size == 0:
            break

        order = [(it - 1 - j) % memory for j in range(memory)]  # newest first
        d = -_two_loop(pg, S[order][:, rows], Y[order][:, rows], rho[order][:, rows], gamma[rows]) * free
        uphill = (d * ga).sum(1) >= 0
        d[uphill] = -pg[uphill]
        fresh[rows[uphill]] = True
        t = np.where(fresh[rows], np.minimum(1.0, 1.0 / np.linalg.norm(pg, axis=1)), 1.0)

        # Armijo backtracking, only re-evaluating the problems still searching.
        xn, fn, gn = xa.copy(), fa.copy(), ga.copy()
        searching = np.arange(rows.size)
        for _ in range(50):
            xt = np.clip(xa[searching] + t[searching, None] * d[searching], lower, upper)
            ft, gt = fun(xt, rows[searching])
            ok = ft <= fa[searching] + 1e-4 * (ga[searching] * (xt - xa[searching])).sum(1)
            acc = searching[ok]
            xn[acc], fn[acc], gn[acc] = xt[ok], ft[ok], gt[ok]
            searching = searching[~ok]
            if searching.size == 0:
                break
            t[searching] *= 0.5
        stuck = np.zeros(rows.size, bool)
        stuck[searching] = True

        s, y = xn - xa, gn - ga
        sy, yy = (s * y).sum(1), (y * y).sum(1)
        good = (sy > 1e-12 * np.maximum(yy, 1e-300)) & ~stuck
        slot = it % memory
        S[slot, rows] = np.where(good[:, None], s, 0.0)
        Y[slot, rows] = np.where(good[:, None], y, 0.0)
        rho[slot, rows] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma[rows] = np.where(good, sy / np.where(good, yy, 1.0), gamma[rows])
        fresh[rows] &= ~good

        x[rows], f[rows], g[rows] = xn, fn, gn
        flat = (fa - fn) <= ftol * np.maximum(np.maximum(np.abs(fa), np.abs(fn)), 1.0)
        active[rows[stuck | flat]] = False
    return x, f
