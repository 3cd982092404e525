"""Names shared by the writer (trainer, evals) and the readers (reports, status, UI).

MLflow layout: experiment = sweep name; one parent run per sweep
(tag sweep4d.role=sweep); one child run per rung (tag sweep4d.role=rung,
sweep4d.rung_key=<rung>-<hash6>). Eval metrics are logged at the checkpoint's step, each
beside its standard error (`<metric>_se`, `se_name`), and the held-out pretraining loss
(`VAL_LOSS_METRIC`) at every checkpoint's step.
"""

from __future__ import annotations

ROLE_TAG = "sweep4d.role"  # "sweep" | "rung"
SPEC_HASH_TAG = "sweep4d.spec_hash"
RUNG_KEY_TAG = "sweep4d.rung_key"
RUNG_TAG = "sweep4d.rung"
STATUS_TAG = "sweep4d.status"
FAILURE_TAG = "sweep4d.failure"
GIT_TAG = "sweep4d.git_commit"
RESTARTS_TAG = "sweep4d.restarts"  # how many times Ray Train restarted the rung's worker group
RESTARTS_METRIC = "train/restarts"  # the same count, logged at the step the failed group reached
VAL_LOSS_METRIC = "val/loss"  # MAE loss on the fixed held-out clips, at every sealed checkpoint's step
# Its row of the results table (reports.collect): task, mode, metric (lower is better: "loss").
VAL_LOSS_ROW = ("pretraining", "pretrain", "val_loss")
SE_SUFFIX = "_se"


def se_name(metric: str) -> str:
    """The name a metric's standard error is logged under: `<metric>_se` (`baseline_iou` ->
    `baseline_iou_se`), so its MLflow key is eval_metric_key(task, mode, se_name(metric))."""
    return metric + SE_SUFFIX


def se_of(metric: str) -> str | None:
    """Inverse of se_name: the metric a `<metric>_se` name is the standard error of, else None."""
    return metric[: -len(SE_SUFFIX)] if metric.endswith(SE_SUFFIX) and len(metric) > len(SE_SUFFIX) else None


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
