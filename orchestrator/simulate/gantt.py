"""The Gantt chart of one simulated sweep: a row per rung (its start-up, training, restarts and
work lost to failures, each failure marked), and a row of the GPUs the evals hold over time."""

from __future__ import annotations

from pathlib import Path

from orchestrator.simulate.engine import SimResult

COLOURS = {"startup": "#9ecae1", "train": "#3182bd", "restart": "#fdae6b", "lost": "#e6550d"}


def draw_gantt(result: SimResult, names: dict[str, str], title: str, path: Path, unit: str = "GPU") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes = list(names)
    hours = 1 / 3600
    fig, (ax, ev) = plt.subplots(
        2, 1, figsize=(9, 1.2 + 0.4 * len(lanes)), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for bar in result.bars:
        if bar.lane == "evals":
            continue
        y = lanes.index(bar.lane)
        ax.barh(y, (bar.end - bar.start) * hours, left=bar.start * hours, color=COLOURS[bar.kind], height=0.6)
    for t, key in result.failures:
        ax.plot(t * hours, lanes.index(key), "x", color="#a50f15", markersize=7, mew=2)
    ax.set_yticks(range(len(lanes)), [f"{names[k]} ({u})" for k, u in _units(result, lanes).items()])
    ax.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(
        [*handles, plt.Line2D([], [], marker="x", ls="", color="#a50f15")],
        [*COLOURS, "failure"],
        loc="lower right",
        fontsize=7,
        ncol=5,
    )
    ax.set_title(title, fontsize=9)
    # Eval GPUs in use: +units at each start, -units at each end.
    steps = sorted(
        [(b.start, b.units) for b in result.bars if b.lane == "evals"]
        + [(b.end, -b.units) for b in result.bars if b.lane == "evals"]
    )
    xs, ys, level = [0.0], [0], 0
    for t, d in steps:
        level += d
        xs.append(t * hours)
        ys.append(level)
    ev.step(xs, ys, where="post", color="#31a354")
    ev.set_ylabel(f"eval {unit}s", fontsize=8)
    ev.set_xlabel("hours since the sweep started")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _units(result: SimResult, lanes: list[str]) -> dict[str, int]:
    held = {k: 0 for k in lanes}
    for b in result.bars:
        if b.lane in held:
            held[b.lane] = max(held[b.lane], b.units)
    return held
