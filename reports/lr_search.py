"""The learning-rate search of a sweep (spec `search`): the best LR per size, a power law of the
optimal LR against size, and the LR it suggests for the rungs that were not searched.

Rows of an LR-grid point carry `search_of` (the ladder rung they are a point of) and `lr`.
Per searched rung, the best point is the one with the lowest held-out loss at the final
checkpoint (or the best value of another named metric). Its LR is refined by a parabola in
log LR through the best point and its two neighbours, and is known to within half a grid
step (the interval of that rung's optimum). The law log lr* = a + b log N is fitted by
weighted least squares with those uncertainties; a rung whose optimum is at the edge of its
grid only bounds the optimum, so the report says so and the law should not be trusted until
the grid is widened.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from contracts.names import VAL_LOSS_ROW
from contracts.tasks import higher_is_better
from reports.units import format_size

# The held-out pretraining loss (task, metric): what picks the best LR when the table has it.
VAL_LOSS = (VAL_LOSS_ROW[0], VAL_LOSS_ROW[2])
Z95 = 1.959964


def has_search(table: pd.DataFrame) -> bool:
    return "search_of" in table.columns and table["search_of"].notna().any()


def selection_metric(table: pd.DataFrame, metric: str | None) -> tuple[str, str] | None:
    """(task, metric) that ranks grid points: held-out loss where present, else `task/metric`."""
    have = set(zip(table["task"].fillna(""), table["metric"].fillna(""), strict=True))
    if metric is None and VAL_LOSS in have:
        return VAL_LOSS
    if metric is not None and tuple(metric.split("/", 1)) in have:
        return tuple(metric.split("/", 1))  # type: ignore[return-value]
    return None


def _final_values(table: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    rows = table[
        (table["task"].fillna("") == task) & (table["metric"] == metric) & table["search_of"].notna()
    ]
    if "mode" in rows.columns:  # frozen evals, or the pretraining loss (its own mode)
        rows = rows[rows["mode"].fillna("frozen").isin(["frozen", VAL_LOSS_ROW[1]])]
    last = rows.loc[rows.groupby("rung")["step"].idxmax()]
    return last[["rung", "search_of", "params", "lr", "value"]]


def _optimum(lrs: np.ndarray, values: np.ndarray, hib: bool) -> dict:
    """Best grid point, refined by a parabola in log LR when it is interior; sigma in log LR."""
    order = np.argsort(lrs)
    lrs, values = lrs[order], values[order]
    score = values if hib else -values
    i = int(np.argmax(score))
    x = np.log(lrs)
    edge = "low" if i == 0 else "high" if i == len(lrs) - 1 else None
    if edge is None:
        xs, ys = x[i - 1 : i + 2], score[i - 1 : i + 2]
        c2, c1, _ = np.polyfit(xs, ys, 2)
        log_best = float(np.clip(-c1 / (2 * c2), xs[0], xs[2])) if c2 < 0 else float(x[i])
        sigma = (xs[2] - xs[0]) / 4  # half of the local grid step
    else:
        log_best = float(x[i])
        sigma = float(np.abs(np.diff(x)).mean()) / 2
    return {
        "best_lr": float(lrs[i]),
        "best_value": float(values[i]),
        "optimal_lr": math.exp(log_best),
        "log_sigma": sigma,
        "edge": edge,
        "grid": [[float(a), float(b)] for a, b in zip(lrs, values, strict=True)],
    }


def fit_lr_law(sizes: list[dict]) -> dict:
    """log lr* = a + b log N by weighted least squares; the 95% interval of b from the optima's sigmas
    (inflated by the scatter when 3 or more sizes over-determine the law)."""
    interior = [s for s in sizes if s["edge"] is None]
    usable = (
        interior if len({s["params"] for s in interior}) >= 2 else sizes
    )  # edges only bound their optimum
    if len({s["params"] for s in usable}) < 2:
        return {"status": "not fitted", "reason": "needs two or more searched sizes"}
    x = np.log([s["params"] for s in usable])
    y = np.log([s["optimal_lr"] for s in usable])
    w = 1.0 / np.square([s["log_sigma"] for s in usable])
    X = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    a, b = cov @ X.T @ (w * y)
    if len(usable) > 2:
        chi2 = float(np.sum(w * (y - a - b * x) ** 2)) / (len(usable) - 2)
        cov = cov * max(1.0, chi2)
    se_b = math.sqrt(cov[1, 1])
    return {
        "status": "fitted",
        "a": float(a),
        "b": float(b),
        "b_lo": float(b - Z95 * se_b),
        "b_hi": float(b + Z95 * se_b),
        "cov": cov.tolist(),
        "sizes_used": [s["rung"] for s in usable],
        "uses_edges": any(s["edge"] for s in usable),
    }


def predict_lr(law: dict, params: float) -> tuple[float, float, float]:
    v = np.array([1.0, math.log(params)])
    mean = float(v @ np.array([law["a"], law["b"]]))
    se = math.sqrt(float(v @ np.array(law["cov"]) @ v))
    return math.exp(mean), math.exp(mean - Z95 * se), math.exp(mean + Z95 * se)


def analyse(table: pd.DataFrame, metric: str | None = None) -> dict | None:
    """The LR search's result (see the module docstring), or None when the table has no search."""
    if not has_search(table):
        return None
    chosen = selection_metric(table, metric)
    if chosen is None:
        want = metric or "held-out loss (pretraining/val_loss)"
        return {"status": "not analysed", "reason": f"the table has no {want} to rank the LR grid by"}
    task, name = chosen
    hib = higher_is_better(name)
    final = _final_values(table, task, name)
    sizes, warnings = [], []
    for base, g in final.groupby("search_of", sort=False):
        opt = _optimum(g["lr"].to_numpy(float), g["value"].to_numpy(float), hib)
        best_rung = str(g.loc[g["lr"] == opt["best_lr"], "rung"].iloc[0])
        sizes.append({"rung": str(base), "params": float(g["params"].iloc[0]), "best_rung": best_rung, **opt})
        if opt["edge"]:
            side = "smallest" if opt["edge"] == "low" else "largest"
            warnings.append(
                f"the best LR of {base} ({opt['best_lr']:.3g}) is the {side} of its grid: "
                f"the optimum may lie beyond it; widen the grid {'down' if opt['edge'] == 'low' else 'up'} "
                "before trusting the law"
            )
    sizes.sort(key=lambda s: s["params"])
    law = fit_lr_law(sizes)
    suggested = []
    if law["status"] == "fitted":
        plain = (
            table[table["search_of"].isna() & table["params"].notna()]
            if "search_of" in table
            else table.iloc[:0]
        )
        for rung, n in plain.groupby("rung")["params"].first().sort_values().items():
            lr, lo, hi = predict_lr(law, float(n))
            suggested.append({"rung": str(rung), "params": float(n), "lr": lr, "lo": lo, "hi": hi})
    return {
        "status": "analysed",
        "metric": f"{task}/{name}" if task else name,
        "higher_is_better": hib,
        "sizes": sizes,
        "law": law,
        "suggested": suggested,
        "warnings": warnings,
    }


def best_points_only(table: pd.DataFrame, search: dict | None) -> pd.DataFrame:
    """The table the scaling laws see: per searched rung, only its best grid point, named as the rung."""
    if not search or search.get("status") != "analysed":
        return table
    best = {s["best_rung"]: s["rung"] for s in search["sizes"]}
    keep = table["search_of"].isna() | table["rung"].isin(best)
    out = table[keep].copy()
    out["rung"] = out["rung"].map(lambda r: best.get(r, r))
    return out


def lines(search: dict) -> list[str]:
    """One line per fact, for the CLI and the report."""
    if search.get("status") != "analysed":
        return [f"LR search: {search['reason']}"]
    out = [f"LR search, best point per size by {search['metric']} at the final checkpoint:"]
    for s in search["sizes"]:
        grid = ", ".join(f"{lr:.3g}: {v:.4g}" for lr, v in s["grid"])
        out.append(
            f"  {s['rung']} ({format_size(s['params'])}): best {s['best_lr']:.3g} "
            f"(optimum ~{s['optimal_lr']:.3g})"
            f"{' at the edge of its grid' if s['edge'] else ''}; grid {grid}"
        )
    law = search["law"]
    if law["status"] == "fitted":
        out.append(
            f"  optimal LR ~ N^{law['b']:.3f} "
            f"(95% interval of the exponent [{law['b_lo']:.3f}, {law['b_hi']:.3f}])"
            + ("; from optima on the edge of their grids, so only a rough guide" if law["uses_edges"] else "")
        )
        for s in search["suggested"]:
            out.append(
                f"  suggested LR for {s['rung']} ({format_size(s['params'])}): {s['lr']:.3g} "
                f"(95% interval [{s['lo']:.3g}, {s['hi']:.3g}])"
            )
    else:
        out.append(f"  no LR law: {law['reason']}")
    out += [f"  WARNING: {w}" for w in search["warnings"]]
    return out
