"""Names shared by the writer (trainer, evals) and the readers (reports, status, UI).

MLflow layout (shared/DESIGN.md): experiment = sweep name; one parent run per sweep
(tag sweep4d.role=sweep); one child run per rung (tag sweep4d.role=rung,
sweep4d.rung_key=<rung>-<hash6>). Eval metrics are logged at the checkpoint's step.
"""

from __future__ import annotations

ROLE_TAG = "sweep4d.role"  # "sweep" | "rung"
SPEC_HASH_TAG = "sweep4d.spec_hash"
RUNG_KEY_TAG = "sweep4d.rung_key"
RUNG_TAG = "sweep4d.rung"
STATUS_TAG = "sweep4d.status"
FAILURE_TAG = "sweep4d.failure"
GIT_TAG = "sweep4d.git_commit"


def eval_metric_key(task: str, mode: str, metric: str) -> str:
    """`eval/<task>/<metric>` for frozen features, `finetune/<task>/<metric>` for finetuned."""
    prefix = "eval" if mode == "frozen" else "finetune"
    return f"{prefix}/{task}/{metric}"


def parse_eval_metric_key(key: str) -> tuple[str, str, str] | None:
    """Inverse of eval_metric_key -> (task, mode, metric), or None for other metrics."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] not in ("eval", "finetune"):
        return None
    return parts[1], ("frozen" if parts[0] == "eval" else "finetune"), parts[2]


# The metric each task is judged by (the 4DS figure's five panels); the rest stay in tables.
HEADLINE = {"point_tracking": "aj", "camera_pose": "epe", "depth": "abs_rel", "box_tracking": "iou", "action": "top1"}


def panel_metrics(pairs: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (task, metric) pairs worth a panel: each task's headline metric where it has one,
    otherwise all of the task's metrics (an unknown task, or a --from table)."""
    have = set(pairs)
    return sorted((t, m) for t, m in have if m == HEADLINE.get(t, m) or (t, HEADLINE.get(t)) not in have)
