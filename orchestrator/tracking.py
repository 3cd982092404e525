"""MLflow tracking through one writer.

`Tracker` owns the only MlflowClient of a sweep. The scheduler runs it as a Ray
actor pinned to the driver's node (where the SQLite file lives); workers anywhere
in the cluster send it metrics and it writes them in batches with `log_batch`.
Runs are found by tag before they are created, so a re-run reuses them: exactly
one parent run per sweep and one child run per rung, ever.

Writes are idempotent: the tracker knows which (key, step) points each run already holds
(read from MLflow once per run and kept up to date) and never sends one twice, so a
replayed step, a retried call or a reconciliation (orchestrator.reconcile) cannot put a
duplicate into a metric's history. The disk is the record; MLflow is a view of it that
`reconcile` repairs after a crash took the tracker's buffer with it.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.store.tracking.dbmodels.models import SqlMetric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient

from contracts.errors import UserError
from contracts.names import ROLE_TAG, RUNG_KEY_TAG, RUNG_TAG, STATUS_TAG
from contracts.spec import RungConfig

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


def is_server(uri: str) -> bool:
    """An MLflow tracking server (http(s)://host:port), as opposed to a database the client opens."""
    return uri.startswith(("http://", "https://"))


class TrackingError(UserError):
    """The tracking server refuses us or cannot be reached: exit 2 before anything starts."""


CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def redacted(uri: str) -> str:
    """The URI with any password in it replaced, for messages (a postgresql:// URI may hold one)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_tracking(uri: str, timeout: float = 10) -> None:
    """Before anything starts: the URI carries no credentials (they come from MLflow's own
    variables, CREDENTIAL_VARS), answers, and accepts them. One request, with a short timeout: the
    MLflow client itself retries an unreachable server for minutes."""
    parts = urllib.parse.urlsplit(uri)
    if is_server(uri) and (parts.username or parts.password):
        raise TrackingError(
            f"tracking.uri {redacted(uri)} holds credentials: remove them from the spec and set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
        )
    if parts.password:  # a database URI: libpq reads PGPASSWORD or ~/.pgpass
        raise TrackingError(
            f"tracking.uri {redacted(uri)} holds a password: remove it from the spec and set PGPASSWORD "
            "(or use ~/.pgpass) instead"
        )
    if not is_server(uri):
        return
    import requests

    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        auth, headers = None, {"Authorization": f"Bearer {token}"}
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        headers = {}
    else:
        auth, headers = None, {}
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    try:
        r = requests.get(url, params={"max_results": 1}, auth=auth, headers=headers, timeout=timeout)
    except requests.RequestException as e:
        raise TrackingError(
            f"the MLflow tracking server at {uri} cannot be reached ({type(e).__name__}); "
            "is it running, and is tracking.uri right?"
        ) from None
    if r.status_code in (401, 403):
        who = "no credentials" if auth is None and not headers else "these credentials"
        raise TrackingError(
            f"the MLflow tracking server at {uri} refused {who} (HTTP {r.status_code}): check "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        )
    if r.status_code != 200:
        raise TrackingError(f"the MLflow tracking server at {uri} answered HTTP {r.status_code} to a search")


def rung_params(rung: RungConfig) -> dict:
    m, e = rung.model, rung.model.encoder
    return {
        "width": e.width,
        "depth": e.depth,
        "mlp": e.mlp,
        "heads": e.heads,
        "encoder_params": rung.encoder_params,
        "total_params": rung.total_params,
        "flops_per_clip": rung.flops_per_clip,
        "train_flops": rung.train_flops,
        "num_tokens": m.num_tokens,
        "frames": m.frames,
        "resolution": m.size,
        "tubelet": "x".join(map(str, m.tubelet)),
        "mask_ratio": m.mask_ratio,
        "decoder": f"{m.decoder.width}/{m.decoder.depth}/{m.decoder.mlp}/{m.decoder.heads}",
        "steps": rung.steps,
        "batch_size": rung.batch_size,
        "lr": rung.optimizer.lr,
        "precision": rung.precision,
        "seed": rung.seed,
        "gpus": rung.gpus,
        "workers": rung.workers,
        "zero_stage": rung.zero_stage,
        "rung_key": rung.key,
    }


class Tracker:
    def __init__(self, uri: str, artifact_root: str | None = None):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        # A server puts artifacts where it was told (--artifacts-destination / its default root).
        self.artifact_root = None if is_server(uri) else artifact_root
        self._pending: dict[str, list[Metric]] = {}
        self._last_flush = time.monotonic()
        self._have: dict[str, dict[str, set[int]]] = {}  # run -> key -> steps MLflow holds
        self.incarnation = uuid.uuid4().hex  # a restarted actor gets a new one (the driver watches it)

    def ping(self) -> str:
        """The driver's once-a-tick call: also flushes a buffer older than FLUSH_EVERY_S, which
        otherwise waits for the next write (training over, evals still running)."""
        if self._pending and time.monotonic() - self._last_flush > FLUSH_EVERY_S:
            self.flush()
        return self.incarnation

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

    def log_metrics_now(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """log_metrics, then flush: when this returns, MLflow holds the points."""
        self.log_metrics(run_id, metrics, step)
        self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for run_id, metrics in pending.items():
            self._write(run_id, metrics)
        self._last_flush = time.monotonic()

    def _held(self, run_id: str) -> dict[str, set[int]]:
        """Which steps MLflow holds for each key of a run: read once per run, then kept current."""
        if run_id not in self._have:
            self._have[run_id] = self._read_steps(run_id)
        return self._have[run_id]

    def _read_steps(self, run_id: str) -> dict[str, set[int]]:
        """Every (key, step) a run holds, in one query on a SQL store (get_metric_history builds an
        ORM object per point: ~20x slower on a long run). On a server, the fewest requests its REST API
        allows: the run (its keys), then each key's history (one request per 25,000 points), the
        keys' requests in parallel."""
        store = getattr(self.client._tracking_client, "store", None)
        if isinstance(store, SqlAlchemyStore):
            held: dict[str, set[int]] = {}
            with store.ManagedSessionMaker() as session:
                store._get_run(run_uuid=run_id, session=session)  # an unknown run raises, as get_run does
                rows = session.query(SqlMetric.key, SqlMetric.step).filter(SqlMetric.run_uuid == run_id)
                for key, step in rows:
                    held.setdefault(key, set()).add(int(step))
            return held
        keys = list(self.client.get_run(run_id).data.metrics)
        if not keys:
            return {}

        def steps(key: str) -> set[int]:
            return {m.step for m in self.client.get_metric_history(run_id, key)}

        with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
            return dict(zip(keys, pool.map(steps, keys), strict=True))

    def _write(self, run_id: str, metrics: list[Metric]) -> int:
        """Log the points MLflow does not hold yet (the first value sent for a (key, step) wins)."""
        held = self._held(run_id)
        new = []
        for m in metrics:
            steps = held.setdefault(m.key, set())
            if m.step not in steps:
                steps.add(m.step)
                new.append(m)
        try:
            for i in range(0, len(new), 1000):
                self.client.log_batch(run_id, metrics=new[i : i + 1000])
        except Exception:
            self._have.pop(run_id, None)  # unsure what landed: read it again next time
            raise
        return len(new)

    def reconcile(self, run_id: str, points: dict[str, dict[int, float]]) -> dict[str, list[int]]:
        """Make the run hold every (key, step) of `points` (the disk record): log what MLflow
        lacks, nothing it has. -> the steps restored per key."""
        self.flush()
        self._have.pop(run_id, None)  # trust MLflow itself, not what this actor believes
        held = self._held(run_id)
        now = int(time.time() * 1000)
        missing = [
            Metric(k, float(v), now, int(s))
            for k, series in points.items()
            for s, v in series.items()
            if int(s) not in held.get(k, ())
        ]
        self._write(run_id, missing)
        restored: dict[str, list[int]] = {}
        for m in missing:
            restored.setdefault(m.key, []).append(m.step)
        return restored

    def finish(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        """status: FINISHED | FAILED | KILLED (MLflow's), mirrored in our status tag."""
        self.flush()
        self.set_tags(run_id, {STATUS_TAG: status.lower(), **(tags or {})})
        self.client.set_terminated(run_id, status)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, local_path, artifact_path)

    def last_steps(self, run_id: str) -> dict[str, int]:
        """The highest step logged so far for each metric key of a run (what a resumed worker
        must not log again: log_batch appends, so a step sent twice is in the history twice)."""
        self.flush()
        return {k: max(steps) for k, steps in self._held(run_id).items() if steps}

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        self.flush()
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]
