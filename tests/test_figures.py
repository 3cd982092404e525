"""The scaling figure: a grid that fits its panels, y-ranges that show the data, far baselines at the edge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reports import figures
from reports.report import fit_report


@pytest.mark.parametrize(("n", "shape"), [(1, (1, 1)), (2, (1, 2)), (4, (2, 2)), (6, (2, 3)), (8, (2, 4))])
def test_the_grid_fits_the_panel_count(n, shape):
    assert figures.grid_shape(n) == shape


def table(action_values, baseline: float) -> pd.DataFrame:
    sizes = {"S": 2e7, "B": 8.8e7, "L": 3e8, "H": 6.3e8}
    rows = []
    for (rung, N), v in zip(sizes.items(), action_values, strict=True):
        rows.append({"rung": rung, "params": N, "task": "action", "metric": "top1", "value": v})
        rows.append(
            {"rung": rung, "params": N, "task": "action", "metric": "baseline_top1", "value": baseline}
        )
        rows += [
            {"rung": rung, "params": N, "task": t, "metric": "abs_rel", "value": 0.9 * (N / 1e7) ** -0.1}
            for t in ("depth", "a", "b", "c", "d")
        ]
    return pd.DataFrame(rows).assign(mode="frozen")


def test_six_panels_fill_a_two_by_three_grid_and_a_far_baseline_is_written_at_the_edge(tmp_path):
    t = table([0.62, 0.63, 0.64, 0.65], baseline=0.08)
    report, _, _ = fit_report(t, tmp_path, fits=["powerlaw"], bootstrap=0, log=lambda line: None)
    fig = figures.scaling_figure(report, t)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == len(visible) == 6
    action = next(ax for ax in visible if ax.get_title().startswith("action"))
    lo, hi = action.get_ylim()
    assert 0.5 < lo < 0.62 and 0.65 < hi < 0.8  # the points fill the panel, not a flat line at the top
    legend = [text.get_text() for text in action.get_legend().get_texts()]
    assert "baseline (frozen) 0.08, below the axis" in legend
    assert not [line for line in action.get_lines() if np.allclose(line.get_ydata(), 0.08)]


def test_a_near_baseline_is_a_line_inside_the_range(tmp_path):
    t = table([0.30, 0.40, 0.50, 0.60], baseline=0.2)
    report, _, _ = fit_report(t, tmp_path, fits=["powerlaw"], bootstrap=0, log=lambda line: None)
    action = next(ax for ax in figures.scaling_figure(report, t).axes if ax.get_title().startswith("action"))
    lo, _ = action.get_ylim()
    assert lo < 0.2 and [line for line in action.get_lines() if np.allclose(line.get_ydata(), 0.2)]
