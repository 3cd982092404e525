"""Report figures (PNG + SVG), in the style of the 4DS paper's scaling figure.

- scaling:    one panel per task metric against parameters (log axis, size labels),
              measured points, fitted curve with its bootstrap band, extrapolation dashed
              to the next rung; frozen and finetune as two series.
- compute:    the metric along every rung's checkpoints against training FLOPs, with the
              compute frontier.
- chinchilla: loss against data seen per rung, with the fitted L(N, D) surface.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from contracts.tasks import headline  # noqa: E402
from reports.collect import BASELINE_PREFIX  # noqa: E402
from reports.fit import predict  # noqa: E402
from reports.units import format_size  # noqa: E402

MODE_COLORS = {"frozen": "#1f77b4", "finetune": "#d62728"}
SIZE_LAWS = ("powerlaw", "saturating")


def panel_metrics(pairs: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (task, metric) pairs worth a panel: each task's headline metric where it has one,
    otherwise all of the task's metrics (an unknown task, or a --from table)."""
    have = set(pairs)
    return sorted((t, m) for t, m in have if m == (headline(t) or m) or (t, headline(t)) not in have)


def write_all(result: dict, table: pd.DataFrame, out: Path) -> list[Path]:
    """Draw every figure that has something to show; returns the files written."""
    files: list[Path] = []
    if result["series"]:
        files += _save(scaling_figure(result, table), out / "scaling")
        files += _save(compute_figure(table), out / "compute")
    chin = [
        (s, e)
        for s in result["series"]
        for e in s["fits"]
        if e["form"] == "chinchilla" and e["status"] == "fitted"
    ]
    if chin:
        files += _save(chinchilla_figure(chin), out / "chinchilla")
    return files


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _panels(n: int, width: float = 3.6, height: float = 3.0):
    n = max(n, 1)  # an empty table still gets a (blank) figure rather than a crash
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _size_ticks(ax, xs) -> None:
    xs = sorted({float(v) for v in xs if np.isfinite(v) and v > 0})
    if len(xs) > 8:  # many sizes (not a ladder): label a spread of them, not all
        xs = [xs[i] for i in np.unique(np.linspace(0, len(xs) - 1, 6).round().astype(int))]
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(xs)
    ax.set_xticklabels([format_size(v) for v in xs], rotation=45 if len(xs) > 5 else 0, fontsize=8)


def _title(task: str, metric: str, hib: bool) -> str:
    return f"{task}\n{metric} ({'↑' if hib else '↓'})" if task else f"{metric} ({'↑' if hib else '↓'})"


def scaling_figure(result: dict, table: pd.DataFrame):
    x = result["x"]
    sizes = sorted(r["params"] for r in result["rungs"])
    # One panel per task's headline metric, as in the 4DS figure; fits.json and the report keep all.
    keys = panel_metrics({(s["task"], s["metric"]) for s in result["series"]})
    fig, axes = _panels(len(keys))
    if not keys:
        axes[0].text(0.5, 0.5, "no metrics to plot", ha="center", va="center", transform=axes[0].transAxes)
    for ax, (task, metric) in zip(axes, keys, strict=False):
        ticks: list[float] = []
        for s in (s for s in result["series"] if (s["task"], s["metric"]) == (task, metric)):
            color = MODE_COLORS.get(s["mode"], "0.3")
            N = np.array(s["points"].get(x, []), float)
            y = np.array(s["points"]["value"], float)
            ax.plot(N, y, "o", color=color, ms=5, label=s["mode"], zorder=3)
            ticks += list(N)
            fitted = next((e for e in s["fits"] if e["form"] in SIZE_LAWS and e["status"] == "fitted"), None)
            if fitted is None or not np.isfinite(N).any():
                continue
            lo_n, hi_n = np.nanmin(N), np.nanmax(N)
            # Dashed to the next rung of the ladder when one is known, else to 2x the largest.
            nxt = next((v for v in sizes if v > hi_n * 1.0001), None) if x == "params" else None
            end = nxt or 2 * hi_n
            ticks.append(end)
            grid_in, grid_out = np.geomspace(lo_n, hi_n, 100), np.geomspace(hi_n, end, 40)
            for grid, style in ((grid_in, "-"), (grid_out, "--")):
                v, lo, hi = predict(fitted["fit"], grid)
                ax.plot(
                    grid,
                    v,
                    style,
                    color=color,
                    lw=1.5,
                    label=f"{fitted['form']} fit" if style == "-" else None,
                )
                if np.isfinite(lo).all():
                    if (
                        0 <= np.nanmin(y) and np.nanmax(y) <= 1
                    ):  # a rate or accuracy: the band cannot leave [0, 1]
                        lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
                    ax.fill_between(grid, lo, hi, color=color, alpha=0.15, lw=0)
        base = table[(table["task"] == task) & (table["metric"] == BASELINE_PREFIX + metric)]
        for mode, b in base.groupby("mode"):
            ax.axhline(
                b["value"].mean(),
                ls=":",
                color=MODE_COLORS.get(mode, "0.3"),
                lw=1,
                label=f"baseline ({mode})",
            )
        _size_ticks(ax, ticks)
        hib = next(
            s["higher_is_better"] for s in result["series"] if (s["task"], s["metric"]) == (task, metric)
        )
        ax.set_title(_title(task, metric, hib), fontsize=10)
        ax.set_xlabel("encoder parameters" if x == "params" else "training FLOPs", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def compute_figure(table: pd.DataFrame):
    t = table[table["metric"].notna() & ~table["metric"].astype(str).str.startswith(BASELINE_PREFIX)]
    t = t[t["value"].notna() & t["train_flops"].notna() & (t["train_flops"] > 0)]
    keys = sorted({(a, b) for a, b in zip(t["task"], t["metric"], strict=True)})
    fig, axes = _panels(max(len(keys), 1))
    if not keys:
        axes[0].text(
            0.5,
            0.5,
            "no training FLOPs in the results table",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
        return fig
    params = t.groupby("rung")["params"].first().sort_values()
    cmap = plt.get_cmap("viridis")
    colors = {r: cmap(i / max(len(params) - 1, 1)) for i, r in enumerate(params.index)}
    for ax, (task, metric) in zip(axes, keys, strict=True):
        g = t[(t["task"] == task) & (t["metric"] == metric)]
        mode = "frozen" if (g["mode"] == "frozen").any() else g["mode"].iloc[0]
        g = g[g["mode"] == mode].sort_values("train_flops")
        hib = bool(g["higher_is_better"].iloc[0])
        for rung, r in g.groupby("rung", sort=False):
            ax.plot(
                r["train_flops"],
                r["value"],
                "o-",
                ms=3,
                lw=1,
                color=colors.get(rung, "0.5"),
                label=f"{rung} ({format_size(params[rung])})",
            )
        # Frontier: the best value reached with at most this much compute, by any rung.
        best = np.maximum.accumulate(g["value"]) if hib else np.minimum.accumulate(g["value"])
        ax.step(g["train_flops"], best, where="post", color="k", ls="--", lw=1, label="frontier")
        ax.set_xscale("log")
        ax.set_title(_title(task, metric, hib) + f" [{mode}]", fontsize=10)
        ax.set_xlabel("training FLOPs", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def chinchilla_figure(items: list[tuple[dict, dict]]):
    fig, axes = _panels(len(items), width=4.2, height=3.4)
    cmap = plt.get_cmap("viridis")
    for ax, (s, e) in zip(axes, items, strict=True):
        pts = pd.DataFrame(e["points"])
        Ns = np.sort(pts["params"].unique())
        lN = np.log(Ns)
        span = max(lN[-1] - lN[0], 1e-12)
        ax.scatter(
            pts["D"], pts["value"], c=(np.log(pts["params"]) - lN[0]) / span, cmap=cmap, s=10, zorder=3
        )
        # With many sizes (e.g. the Chinchilla data), draw the surface at a few of them.
        shown = Ns if len(Ns) <= 8 else Ns[np.unique(np.linspace(0, len(Ns) - 1, 6).round().astype(int))]
        d = np.geomspace(pts["D"].min(), pts["D"].max(), 100)
        for n in shown:
            v, _, _ = predict(e["fit"], np.full_like(d, n), d)
            ax.plot(d, v, color=cmap((np.log(n) - lN[0]) / span), lw=1.2, label=format_size(n))
        p = e["fit"]["params"]
        ax.set_title(
            f"{s['label']}\nE={p['E']:.3g} A={p['A']:.3g} B={p['B']:.3g} α={p['alpha']:.3f} β={p['beta']:.3f}",
            fontsize=8,
        )
        ax.set_xscale("log")
        ax.set_xlabel(f"data seen ({e['D']})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, title="N", title_fontsize=7)
    fig.tight_layout()
    return fig
