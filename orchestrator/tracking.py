"""MLflow tracking through one writer.

`Tracker` owns the only MlflowClient of a sweep. The scheduler runs it as a Ray
actor pinned to the driver's node (where the SQLite file lives); workers anywhere
in the cluster send it metrics and it writes them in batches with `log_batch`.
Runs are found by tag before they are created, so a re-run reuses them: exactly
one parent run per sweep and one child run per rung, ever.
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from contracts.names import ROLE_TAG, RUNG_KEY_TAG, RUNG_TAG, STATUS_TAG

FLUSH_EVERY_S = 2.0
# MLflow 3's UI opens an experiment in its GenAI (traces) view unless told it holds model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
FLUSH_AT = 500  # MLflow accepts up to 1000 metrics per log_batch


def absolute_tracking_uri(uri: str, base: Path | None = None) -> str:
    """Make a relative `sqlite:///runs/mlflow.db` absolute, so every process agrees on the file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = (base or Path.cwd()) / uri[len(prefix) :]
        return prefix + str(path.resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


class Tracker:
    def __init__(self, uri: str, artifact_root: str | None = None):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.artifact_root = artifact_root
        self._pending: dict[str, list[Metric]] = {}
        self._last_flush = time.monotonic()

    # ------------------------------------------------------------ runs, found before created
    def experiment_id(self, sweep: str) -> str:
        exp = self.client.get_experiment_by_name(sweep)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = f"{self.artifact_root}/{sweep}" if self.artifact_root else None
        return self.client.create_experiment(sweep, artifact_location=location, tags=EXPERIMENT_KIND)

    def _find(self, exp_id: str, tag: str, value: str) -> str | None:
        runs = self.client.search_runs([exp_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=2)
        return runs[0].info.run_id if runs else None

    def sweep_run(self, sweep: str, tags: dict[str, str], params: dict[str, str] | None = None) -> str:
        exp = self.experiment_id(sweep)
        run_id = self._find(exp, ROLE_TAG, "sweep")
        if run_id is None:
            run = self.client.create_run(exp, run_name=sweep, tags={ROLE_TAG: "sweep", **tags})
            run_id = run.info.run_id
            self.log_params(run_id, params or {})
        else:
            self.set_tags(run_id, tags)
        return run_id

    def rung_run(
        self,
        sweep: str,
        parent_id: str | None,
        key: str,
        name: str,
        run_name: str,
        params: dict,
        tags: dict[str, str] | None = None,
    ) -> str:
        exp = self.experiment_id(sweep)
        run_id = self._find(exp, RUNG_KEY_TAG, key)
        if run_id is None:
            all_tags = {ROLE_TAG: "rung", RUNG_KEY_TAG: key, RUNG_TAG: name, **(tags or {})}
            if parent_id:
                all_tags["mlflow.parentRunId"] = parent_id
            run_id = self.client.create_run(exp, run_name=run_name, tags=all_tags).info.run_id
            self.log_params(run_id, params)
        return run_id

    # ------------------------------------------------------------ writes
    def log_params(self, run_id: str, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending.setdefault(run_id, []).extend(
            Metric(k, float(v), now, int(step)) for k, v in metrics.items()
        )
        if (
            sum(map(len, self._pending.values())) >= FLUSH_AT
            or time.monotonic() - self._last_flush > FLUSH_EVERY_S
        ):
            self.flush()

    def flush(self) -> None:
        for run_id, metrics in self._pending.items():
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        self._pending.clear()
        self._last_flush = time.monotonic()

    def finish(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        """status: FINISHED | FAILED | KILLED (MLflow's), mirrored in our status tag."""
        self.flush()
        self.set_tags(run_id, {STATUS_TAG: status.lower(), **(tags or {})})
        self.client.set_terminated(run_id, status)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, local_path, artifact_path)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        self.flush()
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]
