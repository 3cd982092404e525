"""The results table that reports read: from a sweep's MLflow runs, or from a CSV/Parquet file.

One row per (rung, checkpoint step, task, mode, metric), columns COLUMNS plus, where
known, clips_seen, tokens, status, failure, split, se (the eval's standard error, from the
metric's `<metric>_se` beside it in MLflow), bounded (a per-row override of `is_bounded`), and
`dataset` (what the eval was scored on: "synthetic", or an eval dataset's label; a series never
mixes two). The held-out pretraining loss (`val/loss`) is one more series: task "pretraining",
mode "pretrain", metric "val_loss" (contracts.names.VAL_LOSS_ROW), at every checkpoint. A rung
that has no eval metric at all (it failed before its first checkpoint) keeps one row with an
empty metric, so that the report can name it instead of silently losing it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from contracts.errors import UserError
from contracts.names import (
    FAILURE_TAG,
    ROLE_TAG,
    RUNG_KEY_TAG,
    RUNG_TAG,
    SEARCH_TAG,
    STATUS_TAG,
    SYNTHETIC,
    VAL_LOSS_METRIC,
    VAL_LOSS_ROW,
    eval_key_dataset,
    parse_eval_metric_key,
    se_of,
)
from contracts.tasks import BASELINE_PREFIX, higher_is_better, is_bounded
from reports import references

COLUMNS = [
    "sweep",
    "rung",
    "rung_key",
    "params",
    "train_flops",
    "step",
    "task",
    "mode",
    "metric",
    "value",
    "higher_is_better",
]
OPTIONAL = [
    "clips_seen",
    "tokens",
    "status",
    "failure",
    "split",
    "se",
    "bounded",
    "dataset",
    "search_of",
    "lr",
]


class ReportError(UserError):
    """Input a user can fix (a bad --from file, an unknown sweep): one clear message."""


def is_baseline(metric) -> bool:
    """`baseline_<metric>` rows are reference numbers: shown in tables, never fitted."""
    return isinstance(metric, str) and metric.startswith(BASELINE_PREFIX)


# ------------------------------------------------------------------------- MLflow


def collect_mlflow(tracking_uri: str, sweep: str) -> pd.DataFrame:
    """Every eval metric at every checkpoint step of every rung of `sweep`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        raise ReportError(
            f"no MLflow experiment named {sweep!r} in {tracking_uri} (the experiment is the sweep's name)"
        )
    rows: list[dict] = []
    for run in _search_all(client, exp.experiment_id, f"tags.`{ROLE_TAG}` = 'rung'"):
        tags, params = run.data.tags, run.data.params
        num = {
            k: _number(params.get(k))
            for k in ("encoder_params", "flops_per_clip", "batch_size", "steps", "num_tokens")
        }
        rung = {
            "sweep": sweep,
            "rung": tags.get(RUNG_TAG, run.info.run_name),
            "rung_key": tags.get(RUNG_KEY_TAG, run.info.run_name),
            "params": num["encoder_params"],
            "status": tags.get(STATUS_TAG),
            "failure": tags.get(FAILURE_TAG),
            "search_of": tags.get(SEARCH_TAG),  # an LR-grid point of this ladder rung, else None
            "lr": _number(params.get("lr")),
        }
        values: dict[tuple, dict[int, float]] = {}  # (task, mode, metric) -> {step: value}
        errors: dict[tuple, dict[int, float]] = {}  # the same for standard errors
        for key in run.data.metrics:
            parsed = VAL_LOSS_ROW if key == VAL_LOSS_METRIC else parse_eval_metric_key(key)
            if parsed is None:
                continue
            task, mode, metric = parsed
            dataset = eval_key_dataset(key)  # synthetic for val/loss too
            of = se_of(metric) if key != VAL_LOSS_METRIC else None
            where = (task, mode, of or metric, dataset)
            into = errors.setdefault(where, {}) if of else values.setdefault(where, {})
            for m in client.get_metric_history(run.info.run_id, key):
                into[m.step] = m.value
        found = False
        for (task, mode, metric, dataset), history in values.items():
            se = errors.get((task, mode, metric, dataset), {})
            for step, value in history.items():
                found = True
                clips = num["batch_size"] * step
                rows.append(
                    rung
                    | {
                        "step": step,
                        "task": task,
                        "mode": mode,
                        "metric": metric,
                        "value": value,
                        "se": se.get(step, np.nan),
                        "dataset": dataset,
                        "train_flops": num["flops_per_clip"] * clips,
                        "clips_seen": clips,
                        "tokens": num["num_tokens"] * clips,
                    }
                )
        if not found:
            rows.append(rung | {"step": np.nan, "task": None, "mode": None, "metric": None, "value": np.nan})
    rows += references.collect_rows(client, exp.experiment_id, sweep) if rows else []  # kind "reference"
    if not rows:
        raise ReportError(f"sweep {sweep!r} in {tracking_uri} has no rung runs (tag {ROLE_TAG}=rung) yet")
    return normalize(pd.DataFrame(rows), sweep=sweep)


def _search_all(client, exp_id: str, filter_string: str):
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


# --------------------------------------------------------------------------- files


def read_table(path: str | Path) -> pd.DataFrame:
    """A results table from CSV or Parquet (`sweep report --from FILE`).

    Needs `model` or `rung`, `params`, `metric`, `value`; the other columns get defaults.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise ReportError(f"{path}: unsupported file type {suffix!r}; give a .csv or .parquet file")
    except ReportError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for a corrupt or non-table file
        raise ReportError(f"{path}: cannot read it as {suffix[1:]}: {e}") from None
    if "rung" not in df.columns and "model" in df.columns:
        df = df.rename(columns={"model": "rung"})
    for col in ("rung", "params", "metric", "value"):
        if col not in df.columns:
            need = "model (or rung)" if col == "rung" else col
            raise ReportError(
                f"{path}: missing column {need!r}; "
                "a results table needs model (or rung), params, metric, value"
            )
    for col in ("params", "value", "step", "train_flops", "tokens", "clips_seen", "se"):
        if col in df.columns:
            num = pd.to_numeric(df[col], errors="coerce")
            bad = num.isna() & df[col].notna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                line = f", line {i + 2}" if suffix == ".csv" else f", row {i}"
                raise ReportError(f"{path}{line}: column {col!r} has a non-numeric value {df[col].iloc[i]!r}")
            df[col] = num
    return normalize(df, sweep=path.stem)


def normalize(df: pd.DataFrame, sweep: str = "") -> pd.DataFrame:
    """Fill defaults so every table has COLUMNS, with one order of columns and rows."""
    df = df.copy()
    df["rung"] = df["rung"].astype(str)
    defaults = {
        "sweep": sweep,
        "rung_key": df["rung"],
        "task": "",
        "mode": "frozen",
        "train_flops": np.nan,
        "dataset": SYNTHETIC,
    }
    for col, value in defaults.items():
        if col not in df.columns:
            df[col] = value
    df["dataset"] = df["dataset"].fillna(SYNTHETIC).astype(str)
    if "step" not in df.columns:
        # Without steps, a rung's checkpoints are ordered by how much they have seen.
        order = next(
            (c for c in ("tokens", "clips_seen", "train_flops") if c in df.columns and df[c].notna().any()),
            None,
        )
        by = df[order] if order else pd.Series(np.arange(len(df)), index=df.index)
        df["step"] = by.groupby([df["rung"], df["task"].fillna(""), df["mode"], df["metric"]]).rank(
            method="first"
        )
    given = df["higher_is_better"] if "higher_is_better" in df.columns else [None] * len(df)
    df["higher_is_better"] = [
        higher_is_better(m) if pd.isna(h) else _boolean(h) for m, h in zip(df["metric"], given, strict=True)
    ]
    given = df["bounded"] if "bounded" in df.columns else [None] * len(df)
    df["bounded"] = [
        is_bounded(m) if pd.isna(b) else _boolean(b) for m, b in zip(df["metric"], given, strict=True)
    ]
    df["task"] = df["task"].fillna("").astype(str).where(df["metric"].notna(), None)
    cols = COLUMNS + [c for c in OPTIONAL if c in df.columns]
    cols += [c for c in df.columns if c not in cols]
    return (
        df[cols]
        .sort_values(["params", "rung", "task", "mode", "metric", "step"], na_position="last", kind="stable")
        .reset_index(drop=True)
    )


def _boolean(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes", "higher")
    return bool(v)
