"""Report figures (PNG + SVG), in the style of the 4DS paper's scaling figure.

- scaling:    one panel per task metric against parameters (log axis, size labels), the
              held-out pretraining loss first; measured points with their standard errors as
              error bars, whether the trend is resolved,
              every fitted size law (one line style each; the selected
              one with its 95% band), extrapolated (faint) to the next rung or the --predict
              target, registered forecasts as interval markers and their outcomes as stars;
              bounded metrics drawn inside [0, 1]; frozen and finetune as two series.
- compute:    the metric along every rung's checkpoints against training FLOPs (pretraining
              loss first), with the compute frontier.
- chinchilla: loss against data seen per rung, with the fitted L(N, D) surface.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from contracts.names import VAL_LOSS_ROW  # noqa: E402
from contracts.tasks import headline  # noqa: E402
from reports import references  # noqa: E402
from reports.collect import BASELINE_PREFIX  # noqa: E402
from reports.fit import predict  # noqa: E402
from reports.units import format_size  # noqa: E402

MODE_COLORS = {"frozen": "#1f77b4", "finetune": "#d62728"}
FORM_STYLES = {"powerlaw": "-", "saturating": "--"}


def panel_metrics(pairs: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (task, metric) pairs worth a panel: each task's headline metric where it has one,
    otherwise all of the task's metrics (an unknown task, or a --from table)."""
    have = set(pairs)
    keep = ((t, m) for t, m in have if m == (headline(t) or m) or (t, headline(t)) not in have)
    return sorted(keep, key=_first)


def _first(key: tuple[str, str]) -> tuple:
    """Panel order: the held-out pretraining loss first, then tasks by name."""
    return (key[0] != VAL_LOSS_ROW[0], *key)


def trend_text(s: dict) -> str:
    """What the report's table and a panel say of a series' trend: "trend resolved" only when the
    selected law's exponent points the way the metric improves and its 95% interval excludes 0
    (reports.report.trend); anything else, an unfitted series included, is "no trend resolved"."""
    return "trend resolved" if (s.get("trend") or {}).get("resolved") else "no trend resolved"


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


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
    target = (result.get("target") or {}).get("N") if x == "params" else None
    forecasts = result.get("forecasts", {}).get("rows", [])
    # One panel per task's headline metric, as in the 4DS figure; fits.json and the report keep all.
    keys = panel_metrics({(s["task"], s["metric"]) for s in result["series"]})
    fig, axes = _panels(len(keys))
    if not keys:
        axes[0].text(0.5, 0.5, "no metrics to plot", ha="center", va="center", transform=axes[0].transAxes)
    for ax, (task, metric) in zip(axes, keys, strict=False):
        ticks: list[float] = []
        panel = [s for s in result["series"] if (s["task"], s["metric"]) == (task, metric)]
        for s in panel:
            color = MODE_COLORS.get(s["mode"], "0.3")
            N = _floats(s["points"].get(x, []))
            y = _floats(s["points"]["value"])
            se = _floats(s["points"].get("se", [None] * len(y)))
            dataset = s.get("dataset", "synthetic")  # a real dataset's series is labelled and drawn hollow
            yerr = np.where(np.isfinite(se), se, 0) if np.isfinite(se).any() else None
            ax.errorbar(
                N,
                y,
                yerr=yerr,
                fmt="o",
                color=color,
                ms=5,
                capsize=3,
                elinewidth=1,
                mfc="none" if dataset != "synthetic" else color,
                label=s["mode"] if dataset == "synthetic" else f"{s['mode']} [{dataset}]",
                zorder=3,
            )
            ticks += list(N)
            if not np.isfinite(N).any():
                continue
            lo_n, hi_n = np.nanmin(N), np.nanmax(N)
            # Extrapolated to the --predict target, else to the next rung of the ladder, else 2x.
            nxt = next((v for v in sizes if v > hi_n * 1.0001), None) if x == "params" else None
            end = max(target or 0, nxt or 2 * hi_n)
            ticks.append(end)
            selected = s.get("selection", {}).get("form")
            for e in (e for e in s["fits"] if e["form"] in FORM_STYLES and e["status"] == "fitted"):
                style, chosen = FORM_STYLES[e["form"]], e["form"] == selected
                label = f"{s['mode']} {e['form']}" + (" (selected)" if chosen else "")
                for grid, alpha in (
                    (np.geomspace(lo_n, hi_n, 100), 1.0),
                    (np.geomspace(hi_n, end, 60), 0.45),
                ):
                    v, lo, hi = predict(e["fit"], grid)
                    ax.plot(
                        grid,
                        v,
                        style,
                        color=color,
                        lw=1.6 if chosen else 1.0,
                        alpha=alpha,
                        label=label if alpha == 1 else None,
                    )
                    if chosen and np.isfinite(lo).all():
                        ax.fill_between(grid, lo, hi, color=color, alpha=0.12, lw=0)
            for r in (r for r in forecasts if r["series"] == s["label"]):
                ax.errorbar(
                    [r["N"]],
                    [r["value"]],
                    yerr=[[r["value"] - r["lo"]], [r["hi"] - r["value"]]],
                    fmt="D",
                    ms=5,
                    color=color,
                    mfc="white",
                    capsize=3,
                    zorder=4,
                    label=f"forecast {r['created'][:10]}",
                )
                if r["observed"] is not None:
                    ax.plot(
                        [r["N"]],
                        [r["observed"]],
                        "*",
                        color="k" if r.get("inside") else "#e377c2",
                        ms=10,
                        zorder=5,
                        label="outcome",
                    )
                ticks.append(r["N"])
        base = table[(table["task"] == task) & (table["metric"] == BASELINE_PREFIX + metric)]
        for mode, b in base.groupby("mode"):
            ax.axhline(
                b["value"].mean(),
                ls=":",
                color=MODE_COLORS.get(mode, "0.3"),
                lw=1,
                label=f"baseline ({mode})",
            )
        if x == "params":  # a reference has a size but no training FLOPs
            ticks += references.draw(ax, pd.DataFrame(result.get("references") or {}), panel)
        _size_ticks(ax, ticks)
        if any(s.get("bounded") for s in panel):  # a fraction: the axis stays inside [0, 1]
            lo_y, hi_y = ax.get_ylim()
            ax.set_ylim(max(lo_y, 0.0), min(hi_y, 1.0))
        hib = panel[0]["higher_is_better"]
        said = [(f"{s['mode']}: " if len(panel) > 1 else "") + trend_text(s) for s in panel]
        ax.text(
            0.02,
            0.02,
            "\n".join(said),
            transform=ax.transAxes,
            fontsize=7,
            va="bottom",
            ha="left",
            color="0.15" if all(s.get("trend", {}).get("resolved") for s in panel) else "#b22222",
        )
        ax.set_title(_title(task, metric, hib), fontsize=10)
        ax.set_xlabel("encoder parameters" if x == "params" else "training FLOPs", fontsize=9)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        keep = dict(zip(labels, handles, strict=True))  # one entry per label
        ax.legend(keep.values(), keep.keys(), fontsize=6, frameon=False)
    fig.tight_layout()
    return fig


def compute_figure(table: pd.DataFrame):
    t = table[table["metric"].notna() & ~table["metric"].astype(str).str.startswith(BASELINE_PREFIX)]
    t = t[t["value"].notna() & t["train_flops"].notna() & (t["train_flops"] > 0)]
    keys = sorted({(a, b) for a, b in zip(t["task"], t["metric"], strict=True)}, key=_first)
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
            se = r["se"].to_numpy(float) if "se" in r and r["se"].notna().any() else None
            yerr = None if se is None else np.nan_to_num(se)
            ax.errorbar(
                r["train_flops"],
                r["value"],
                yerr=yerr,
                fmt="o-",
                ms=3,
                lw=1,
                capsize=2,
                elinewidth=0.8,
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
            f"{s['label']}\nE={p['E']:.3g} A={p['A']:.3g} B={p['B']:.3g} "
            f"α={p['alpha']:.3f} β={p['beta']:.3f}",
            fontsize=8,
        )
        ax.set_xscale("log")
        ax.set_xlabel(f"data seen ({e['D']})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, title="N", title_fontsize=7)
    fig.tight_layout()
    return fig
