"""Names shared by the writer (trainer, evals) and the readers (reports, status, UI).

MLflow layout: experiment = sweep name; one parent run per sweep
(tag sweep4d.role=sweep); one child run per rung (tag sweep4d.role=rung,
sweep4d.rung_key=<rung>-<hash6>) and one per reference model (tag sweep4d.role=reference,
sweep4d.reference=<name>-<hash6>, params REFERENCE_PARAMS; its evals logged at step 0).
Eval metrics are logged at the checkpoint's step, each
beside its standard error (`<metric>_se`, `se_name`), and the held-out pretraining loss
(`VAL_LOSS_METRIC`) at every checkpoint's step.
"""

from __future__ import annotations

from contracts.tasks import SYNTHETIC

ROLE_TAG = "sweep4d.role"  # "sweep" | "rung" | "reference"
REFERENCE_ROLE = "reference"
REFERENCE_TAG = "sweep4d.reference"  # a reference model's run: its <name>-<hash6>
# A reference run's params: what it is and where it sits on the size axis.
REFERENCE_PARAMS = ("source", "id", "num_params", "layer", "input_shape")
SPEC_HASH_TAG = "sweep4d.spec_hash"
RUNG_KEY_TAG = "sweep4d.rung_key"
RUNG_TAG = "sweep4d.rung"
STATUS_TAG = "sweep4d.status"
FAILURE_TAG = "sweep4d.failure"
GIT_TAG = "sweep4d.git_commit"
SEARCH_TAG = "sweep4d.search_of"  # an LR-grid point: the ladder rung it is a point of (spec `search`)
RESTARTS_TAG = "sweep4d.restarts"  # how many times Ray Train restarted the rung's worker group
RESTARTS_METRIC = "train/restarts"  # the same count, logged at the step the failed group reached
VAL_LOSS_METRIC = "val/loss"  # MAE loss on the fixed held-out clips, at every sealed checkpoint's step
CKPT_WAIT_METRIC = (
    "train/ckpt_wait_s"  # on a store: how long a checkpoint step waited for the previous upload
)
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


DATASET_TAG = (
    "sweep4d.dataset.{task}"  # on a rung run: the eval dataset of <task> (its label, or "synthetic")
)
# eval/<task>:<dataset>/<metric>: a real dataset's metrics never share a key (so a series) with
# synthetic ones. (MLflow keys allow only / \w . - : and space; a dataset label is "<format>:<name>",
# contracts.spec.EvalData.)
DATASET_SEP = ":"


def eval_metric_key(task: str, mode: str, metric: str, dataset: str = SYNTHETIC) -> str:
    """`eval/<task>/<metric>` for frozen features, `finetune/<task>/<metric>` for finetuned; with a
    dataset other than the synthetic world, `eval/<task>:<dataset>/<metric>`."""
    prefix = "eval" if mode == "frozen" else "finetune"
    where = task if dataset == SYNTHETIC else f"{task}{DATASET_SEP}{dataset}"
    return f"{prefix}/{where}/{metric}"


def parse_eval_metric_key(key: str) -> tuple[str, str, str] | None:
    """Inverse of eval_metric_key -> (task, mode, metric), or None for other metrics
    (the dataset: eval_key_dataset)."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] not in ("eval", "finetune"):
        return None
    return parts[1].split(DATASET_SEP)[0], ("frozen" if parts[0] == "eval" else "finetune"), parts[2]


def eval_key_dataset(key: str) -> str:
    """The dataset an eval metric key was scored on ("synthetic" when the key names none)."""
    parts = key.split("/")
    return parts[1].partition(DATASET_SEP)[2] or SYNTHETIC if len(parts) == 3 else SYNTHETIC
