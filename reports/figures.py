"""Report figures (PNG + SVG), in the style of the 4DS paper's scaling figure.

All of them draw from the typed results (reports.results), never from fits.json's dicts.

- scaling:    one panel per task metric against parameters (log axis, size labels), the
              held-out pretraining loss first; measured points with their standard errors as
              error bars, whether the trend is resolved,
              every fitted size law (one line style each; the selected
              one with its 95% band), extrapolated (faint) to the next rung or the --predict
              target, registered forecasts as interval markers and their outcomes as stars;
              frozen and finetune as two series; reference models (reports.references) as
              labelled black markers at their sizes, a parameter-free one as a dashed line.
              Panels sit in a near-square grid that fits their count; each y-range shows its
              panel's points, references and forecasts (inside [0, 1] for a bounded metric), and
              a trivial baseline far outside it is written at the panel's edge with its value
              rather than stretching the axis.
- compute:    the metric along every rung's checkpoints against training FLOPs (pretraining
              loss first), with the compute frontier.
- chinchilla: loss against data seen per rung, with the fitted L(N, D) surface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports import references  # noqa: E402
from reports.collect import BASELINE_PREFIX  # noqa: E402
from reports.fit import predict  # noqa: E402
from reports.results import (  # noqa: E402
    FormFit,
    ReferencePoint,
    Report,
    ScoredForecast,
    Series,
    panel_metrics,
    panel_order,
)
from reports.text import fmt, trend_text  # noqa: E402
from reports.units import format_size  # noqa: E402

MODE_COLORS = {"frozen": "#1f77b4", "finetune": "#d62728"}
FORM_STYLES = {"powerlaw": "-", "saturating": "--"}


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


def write_all(report: Report, table: pd.DataFrame, out: Path) -> list[Path]:
    """Draw every figure that has something to show; returns the files written."""
    files: list[Path] = []
    if report.series:
        files += _save(scaling_figure(report, table), out / "scaling")
        files += _save(compute_figure(table), out / "compute")
    chin = [(s, e) for s in report.series for e in s.fits if e.form == "chinchilla" and e.fitted]
    if chin:
        files += _save(chinchilla_figure(chin), out / "chinchilla")
    return files


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) for n panels: near-square, as few empty cells as possible (six panels: 2 x 3)."""
    n = max(n, 1)
    square = math.ceil(math.sqrt(n))
    cols = min((square, square + 1), key=lambda c: (math.ceil(n / c) * c - n, c))
    cols = min(cols, n)
    return math.ceil(n / cols), cols


def _panels(n: int, width: float = 3.6, height: float = 3.0):
    n = max(n, 1)  # an empty table still gets a (blank) figure rather than a crash
    rows, cols = grid_shape(n)
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


@dataclass
class Panel:
    """One panel of the scaling figure: a task's headline metric, every mode's series, the
    trivial baselines (mode -> value) and the reference models measured on those series."""

    task: str
    metric: str
    series: list[Series]
    baselines: dict[str, float] = field(default_factory=dict)
    references: list[ReferencePoint] = field(default_factory=list)

    @property
    def bounded(self) -> bool:
        return any(s.bounded for s in self.series)


def scaling_panels(report: Report, table: pd.DataFrame) -> list[Panel]:
    """One panel per task's headline metric, as in the 4DS figure; fits.json and the report keep all."""
    panels = []
    for task, metric in panel_metrics({(s.task, s.metric) for s in report.series}):
        base = table[(table["task"] == task) & (table["metric"] == BASELINE_PREFIX + metric)]
        series = [s for s in report.series if (s.task, s.metric) == (task, metric)]
        panels.append(
            Panel(
                task,
                metric,
                series,
                {str(mode): float(b["value"].mean()) for mode, b in base.groupby("mode")},
                [p for s in series for p in references.points(report.references, s)],
            )
        )
    return panels


def scaling_figure(report: Report, table: pd.DataFrame):
    panels = scaling_panels(report, table)
    fig, axes = _panels(len(panels))
    if not panels:
        axes[0].text(0.5, 0.5, "no metrics to plot", ha="center", va="center", transform=axes[0].transAxes)
    for ax, panel in zip(axes, panels, strict=False):
        shown = [_draw_series(ax, s, report) for s in panel.series]
        ticks = [x for xs, _ in shown for x in xs]
        ys = [y for _, vs in shown for y in vs]
        if report.x == "params":  # a reference has a size, not a training budget on this ladder
            ticks += references.draw(ax, panel.references)
            ys += [v for p in panel.references for v in (p.value - (p.se or 0), p.value + (p.se or 0))]
        _size_ticks(ax, ticks)
        said = [(f"{s.mode}: " if len(panel.series) > 1 else "") + trend_text(s) for s in panel.series]
        resolved = all(s.trend is not None and s.trend.resolved for s in panel.series)
        ax.text(
            0.02,
            0.02,
            "\n".join(said),
            transform=ax.transAxes,
            fontsize=7,
            va="bottom",
            ha="left",
            color="0.15" if resolved else "#b22222",
        )
        _y_range_and_baselines(ax, ys, panel)
        ax.set_title(_title(panel.task, panel.metric, panel.series[0].higher_is_better), fontsize=10)
        ax.set_xlabel("encoder parameters" if report.x == "params" else "training FLOPs", fontsize=9)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        keep = dict(zip(labels, handles, strict=True))  # one entry per label
        ax.legend(keep.values(), keep.keys(), fontsize=6, frameon=False)
    fig.tight_layout()
    return fig


def _draw_series(ax, s: Series, report: Report) -> tuple[list[float], list[float]]:
    """A series' points with error bars, its fitted laws (extrapolated faintly), its registered
    forecasts and their outcomes. Returns the x values to label and the y values to show."""
    x = report.x
    color = MODE_COLORS.get(s.mode, "0.3")
    N = _floats(s.points.get(x, []))
    y = _floats(s.points["value"])
    se = _floats(s.points.get("se", [None] * len(y)))
    synthetic = s.dataset == "synthetic"  # a real dataset's series is labelled and drawn hollow
    err = np.where(np.isfinite(se), se, 0)
    ax.errorbar(
        N,
        y,
        yerr=err if np.isfinite(se).any() else None,
        fmt="o",
        color=color,
        ms=5,
        capsize=3,
        elinewidth=1,
        mfc=color if synthetic else "none",
        label=s.mode if synthetic else f"{s.mode} [{s.dataset}]",
        zorder=3,
    )
    ticks, ys = list(N), [*(y - err), *(y + err)]
    if not np.isfinite(N).any():
        return ticks, ys
    lo_n, hi_n = np.nanmin(N), np.nanmax(N)
    # Extrapolated to the --predict target, else to the next rung of the ladder, else 2x.
    target = report.target.N if report.target and x == "params" else None
    sizes = sorted(r["params"] for r in report.rungs)
    nxt = next((v for v in sizes if v > hi_n * 1.0001), None) if x == "params" else None
    end = max(target or 0, nxt or 2 * hi_n)
    ticks.append(end)
    for e in (e for e in s.fits if e.form in FORM_STYLES and e.fitted):
        chosen = s.selection is not None and e.form == s.selection.form
        _draw_law(
            ax, e, (lo_n, hi_n, end), color, chosen, f"{s.mode} {e.form}" + (" (selected)" if chosen else "")
        )
    for r in (r for r in report.forecasts.rows if r.series == s.label):
        ys += _draw_forecast(ax, r, color)
        ticks.append(r.N)
    return ticks, ys


def _draw_forecast(ax, r: ScoredForecast, color) -> list[float]:
    """A registered forecast as an interval marker, and its outcome as a star once measured."""
    ax.errorbar(
        [r.N],
        [r.value],
        yerr=[[r.value - r.lo], [r.hi - r.value]],
        fmt="D",
        ms=5,
        color=color,
        mfc="white",
        capsize=3,
        zorder=4,
        label=f"forecast {r.created[:10]}",
    )
    if r.observed is None:
        return [r.value, r.lo, r.hi]
    star = "k" if r.inside else "#e377c2"
    ax.plot([r.N], [r.observed], "*", color=star, ms=10, zorder=5, label="outcome")
    return [r.value, r.lo, r.hi, r.observed]


def _draw_law(ax, e: FormFit, span: tuple[float, float, float], color, chosen: bool, label: str) -> None:
    """A fitted law over the measured sizes, then faint to `end`; the selected one with its 95% band."""
    lo_n, hi_n, end = span
    for grid, alpha in ((np.geomspace(lo_n, hi_n, 100), 1.0), (np.geomspace(hi_n, end, 60), 0.45)):
        v, lo, hi = predict(e.fit, grid)
        style = FORM_STYLES[e.form]
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


def _y_range_and_baselines(ax, ys: list[float], panel: Panel) -> None:
    """A y-range that shows the panel's measured points (with error bars) and forecasts; a trivial
    baseline near that range is a dotted line inside it, one far outside is marked at the panel's
    edge with its value instead of stretching the axis (and flattening the points into a line)."""
    vals = np.array([v for v in ys if v is not None and np.isfinite(v)], float)
    if not len(vals):
        lo, hi = ax.get_ylim()
    else:
        lo, hi = float(vals.min()), float(vals.max())
    span = hi - lo if hi > lo else max(abs(hi) * 0.1, 1e-3)
    for mode, b in panel.baselines.items():
        color = MODE_COLORS.get(mode, "0.3")
        if lo - span <= b <= hi + span:  # near the data: draw it, and show it
            ax.axhline(b, ls=":", color=color, lw=1, label=f"baseline ({mode})")
            lo, hi = min(lo, b), max(hi, b)
            continue
        below = b < lo  # a marker on the edge it lies beyond; its value in the legend
        ax.plot(
            [0.97],
            [0.0 if below else 1.0],
            "v" if below else "^",
            transform=ax.transAxes,
            clip_on=False,
            color=color,
            ms=7,
            label=f"baseline ({mode}) {fmt(b)}, {'below' if below else 'above'} the axis",
        )
    pad = 0.08 * (hi - lo if hi > lo else span)
    lo, hi = lo - pad, hi + pad
    if panel.bounded:  # a fraction: the axis stays inside [0, 1]
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    ax.set_ylim(lo, hi)


def compute_figure(table: pd.DataFrame):
    t = table[table["metric"].notna() & ~table["metric"].astype(str).str.startswith(BASELINE_PREFIX)]
    t = t[t["value"].notna() & t["train_flops"].notna() & (t["train_flops"] > 0)]
    keys = sorted({(a, b) for a, b in zip(t["task"], t["metric"], strict=True)}, key=panel_order)
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


def chinchilla_figure(items: list[tuple[Series, FormFit]]):
    fig, axes = _panels(len(items), width=4.2, height=3.4)
    cmap = plt.get_cmap("viridis")
    for ax, (s, e) in zip(axes, items, strict=True):
        pts = pd.DataFrame(e.points)
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
            v, _, _ = predict(e.fit, np.full_like(d, n), d)
            ax.plot(d, v, color=cmap((np.log(n) - lN[0]) / span), lw=1.2, label=format_size(n))
        p = e.fit.params
        ax.set_title(
            f"{s.label}\nE={p['E']:.3g} A={p['A']:.3g} B={p['B']:.3g} α={p['alpha']:.3f} β={p['beta']:.3f}",
            fontsize=8,
        )
        ax.set_xscale("log")
        ax.set_xlabel(f"data seen ({e.D})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, title="N", title_fontsize=7)
    fig.tight_layout()
    return fig
