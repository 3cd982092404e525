"""The task catalog: the one list of eval tasks and what every layer needs to know of them.

Spec validation (`evals.tasks`), the evals (`evals.run` builds each task's `Task`),
the figure's panels, the CLI and the reports all read `TASKS`. The headline metric is
the one a task is judged by (the five panels of the 4DS scaling figure); the others stay
in tables. `higher_is_better` is the one rule for every metric's direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskInfo:
    name: str
    headline: str  # the metric that picks the best readout epoch on val and heads the figure's panel
    baseline: str  # what the trivial baseline predicts (its metrics are logged as baseline_<metric>)
    # Readout settings this task needs beyond the spec's shared `evals.readout`; a spec's
    # `evals.task_readout` still has the last word.
    readout: dict[str, Any] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.headline)


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        # Motion at 32x32 is sub-token: its readout needs more epochs than the shared default to beat
        # the baseline (docs/architecture.md, "Evals").
        TaskInfo("point_tracking", "aj", "the point never moves and is always visible", {"epochs": 20}),
        TaskInfo("camera_pose", "epe", "the camera never moves (identity relative poses)"),
        TaskInfo("depth", "abs_rel", "the train set's mean depth per pixel"),
        TaskInfo("box_tracking", "iou", "the box never moves"),
        TaskInfo("action", "top1", "the train set's most frequent class"),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
MODES = ("frozen", "finetune")

BASELINE_PREFIX = "baseline_"
# Substrings that mark an error-like metric (lower is better); every other metric is a score
# (accuracies, Jaccard, IoU, delta thresholds). Substrings rather than whole names, so that
# tables from elsewhere (`sweep report --from`) with names like rotation_err_deg read right too.
_LOWER_IS_BETTER = ("err", "rel", "rmse", "loss", "epe")


def higher_is_better(metric: str) -> bool:
    """Direction of a metric from its name (`baseline_` prefix and suffixes like `_all` allowed)."""
    name = str(metric).lower().removeprefix(BASELINE_PREFIX)
    return not any(s in name for s in _LOWER_IS_BETTER)


# Metrics that are fractions in [0, 1] (accuracies, IoU, Jaccard/AJ, δ-thresholds, occlusion
# accuracy, points within a threshold): matched as a name or a name's prefix.
_BOUNDED = (
    "acc",
    "accuracy",
    "top1",
    "top5",
    "iou",
    "miou",
    "jaccard",
    "aj",
    "delta",
    "δ",
    "oa",
    "pts_within",
    "occlusion_acc",
    "precision",
    "recall",
    "f1",
)


def is_bounded(metric: str) -> bool:
    """Whether a metric lives in [0, 1], from its name (a results table's `bounded` column overrides it)."""
    name = str(metric).lower().removeprefix(BASELINE_PREFIX)
    prefixed = any(
        name == b or name.startswith(b + "_") or (len(b) > 3 and name.startswith(b)) for b in _BOUNDED
    )
    return prefixed or name.endswith(("_acc", "_accuracy", "_iou"))


def headline(task: str) -> str | None:
    """The task's headline metric, or None for a task the catalog does not know (a --from table)."""
    info = TASKS.get(task)
    return info.headline if info else None
