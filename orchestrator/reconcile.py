"""Disk is the record, MLflow a reconciled view of it.

Every metric a sweep produces is written to the run directory before it is sent to MLflow:
training steps to metrics.jsonl, system samples to system.jsonl, worker-group restarts to
restarts.jsonl, eval results to their records (contracts.layout). A crash can therefore
only lose points on their way to MLflow (a SIGKILLed driver takes the tracker actor's
buffer with it; a killed tracker loses its own), never from disk. `reconcile_rung` reads a
rung's disk record and has the tracker log every (key, step) its MLflow run lacks, and
nothing it holds (`Tracker.reconcile`): one value per (key, step), whatever happened.

`sweep run` reconciles every rung when it starts, when the tracker actor was restarted and
when it stops; `sweep sync` and `sweep report` (before collecting) do it from disk alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from contracts.layout import RungPaths, SweepPaths, read_json, read_jsonl, step_of
from contracts.names import (
    CKPT_WAIT_METRIC,
    RESTARTS_METRIC,
    SEARCH_TAG,
    SPEC_HASH_TAG,
    SYNTHETIC,
    eval_metric_key,
    parse_eval_metric_key,
)
from contracts.spec import RungConfig, SpecError, SweepSpec
from contracts.storage import check_reachable, root_of, runs_root, uri_of

Points = dict[str, dict[int, float]]  # metric key -> step -> value
# (run_id, points) -> the steps restored per key
Reconciler = Callable[[str, Points], dict[str, list[int]]]


def _lines(path: Path, into: Points) -> None:
    """A per-step JSON-lines record; the first line of a step wins (as in MLflow)."""
    for rec in read_jsonl(path):
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)):
                into.setdefault(k, {}).setdefault(step, float(v))


def disk_points(paths: RungPaths) -> Points:
    """Every metric point of a rung on disk, under its MLflow key."""
    points: Points = {}
    _lines(paths.metrics, points)
    _lines(paths.system, points)
    for count, rec in enumerate(read_jsonl(paths.restarts), start=1):
        if isinstance(rec.get("died_at_step"), int):
            points.setdefault(RESTARTS_METRIC, {}).setdefault(rec["died_at_step"], float(count))
    for path in sorted(paths.evals.glob("step_*/*.json")):
        rec = read_json(path) or {}
        if rec.get("state") != "done" or "-" not in path.stem:
            continue
        task, mode = path.stem.rsplit("-", 1)
        step = step_of(path.parent.name)
        for metric, v in (rec.get("metrics") or {}).items():
            key = eval_metric_key(task, mode, metric, rec.get("dataset", SYNTHETIC))  # as the driver logs it
            points.setdefault(key, {})[step] = float(v)
    return points


def repair_line(key: str, restored: dict[str, list[int]]) -> str | None:
    """`[m1] restored 5 eval metrics and 37 training steps to MLflow`, or None if nothing was."""
    evals = sum(len(v) for k, v in restored.items() if parse_eval_metric_key(k) is not None)
    train = {s for k, v in restored.items() if k.startswith("train/") for s in v}
    system = {s for k, v in restored.items() if k.startswith("system/") for s in v}
    other = sum(
        len(v)
        for k, v in restored.items()
        if parse_eval_metric_key(k) is None and not k.startswith(("train/", "system/"))
    )
    parts = [
        f"{n} {what}"
        for n, what in (
            (evals, "eval metrics"),
            (len(train), "training steps"),
            (len(system), "system samples"),
            (other, "other points"),
        )
        if n
    ]
    if not parts:
        return None
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"[{key}] restored {joined} to MLflow"


def reconcile_rung(paths: RungPaths, run_id: str, reconciler: Reconciler) -> dict[str, list[int]]:
    return reconciler(run_id, disk_points(paths))


def reconcile_runs(
    runs: dict[str, tuple[RungPaths, str]], reconciler: Reconciler, say: Callable[[str], None]
) -> dict[str, dict[str, list[int]]]:
    """Reconcile each rung (key -> (paths, MLflow run id)); one line per rung repaired, one in all."""
    t0 = time.monotonic()
    out = {}
    for key, (paths, run_id) in runs.items():
        out[key] = reconcile_rung(paths, run_id, reconciler)
        line = repair_line(key, out[key])
        if line:
            say(line)
    points = sum(len(v) for r in out.values() for v in r.values())
    say(
        f"reconciled {len(runs)} rung(s) with MLflow in {time.monotonic() - t0:.1f}s"
        + (f": {points} points restored" if points else ": nothing missing")
    )
    return out


def runs_on_disk(sweep: SweepPaths) -> dict[str, tuple[RungPaths, str]]:
    """Every rung directory of a sweep that knows its MLflow run (info.json)."""
    found = {}
    for info_path in sorted(sweep.root.glob("*/info.json")):
        info = read_json(info_path) or {}
        if info.get("mlflow_run_id"):
            found[info_path.parent.name] = (RungPaths(info_path.parent), info["mlflow_run_id"])
    return found


def runs_in_store(tracker, sweep: SweepPaths) -> dict[str, tuple[RungPaths, str]]:
    """Every rung of a sweep with its run in `tracker`'s MLflow store: the run info.json names, or,
    when this store has never seen it (`sweep report` on a machine other than the driver's, which
    reads the run directories from object storage but has its own SQLite), one found by tag or
    created from the rung's records."""
    from mlflow.exceptions import MlflowException

    from orchestrator.tracking import rung_params

    found, parent = {}, None
    for key, (paths, run_id) in runs_on_disk(sweep).items():
        try:
            tracker.client.get_run(run_id)
            found[key] = (paths, run_id)
            continue
        except MlflowException:
            pass
        if parent is None:
            sweep_info = read_json(sweep.sweep_json) or {}
            parent = tracker.sweep_run(sweep.root.name, {SPEC_HASH_TAG: sweep_info.get("spec_hash", "")})
        info = read_json(paths.info) or {}
        rung = RungConfig.from_dict(info["config"])
        tags = {SEARCH_TAG: rung.search_of} if rung.search_of else None
        here = tracker.rung_run(
            sweep.root.name, parent, key, rung.name, rung.run_name, rung_params(rung), tags
        )
        state = (read_json(paths.status) or {}).get("state")
        if state in ("done", "failed"):  # it ended as the record says
            tracker.finish(here, "FINISHED" if state == "done" else "FAILED")
        found[key] = (paths, here)
    return found


def sync_sweep(
    sweep_dir: Path, say: Callable[[str], None] = print, tracking_uri: str | None = None
) -> dict[str, dict[str, list[int]]] | None:
    """`sweep sync` (and `sweep report` before it collects): reconcile a sweep's MLflow runs from
    its run directories, in this process, into `tracking_uri` (default: the one the driver used).
    Skipped (None) while a driver holds the sweep: it is the one MLflow writer then, and reconciles
    itself."""
    from mlflow.exceptions import MlflowException

    from orchestrator.state import SweepLock
    from orchestrator.tracking import Tracker, sqlite_path

    paths = SweepPaths(root_of(sweep_dir))
    holder = SweepLock(paths.lock).holder()
    if holder:
        say(
            f"sweep '{paths.root.name}' is running (pid {holder['pid']}): its driver reconciles MLflow itself"
        )
        return None
    info = read_json(paths.sweep_json) or {}
    uri = tracking_uri or info.get("tracking_uri")
    if not uri:
        say(f"{paths.root}: no sweep.json with a tracking URI; nothing to reconcile")
        return {}
    if (db := sqlite_path(uri)) is not None:  # a machine that has never tracked this sweep
        db.parent.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(uri, uri_of(paths.root.parent / "mlartifacts"))

    def reconciler(run_id: str, points: Points) -> dict[str, list[int]]:
        try:
            return tracker.reconcile(run_id, points)
        except MlflowException as e:  # a run deleted from the store: `sweep run` recreates it
            say(f"WARNING run {run_id} could not be reconciled: {str(e).splitlines()[0]}")
            return {}

    return reconcile_runs(runs_in_store(tracker, paths), reconciler, say)


# Measurements, not results: a step trained again after a crash measures them afresh, and MLflow keeps
# the first value it was sent while metrics.jsonl keeps the last (the step's line is rewritten).
MEASURED = (
    "train/clips_per_s",
    "train/tokens_per_s",
    "train/tflops",
    "train/mfu",
    CKPT_WAIT_METRIC,
    "system/",
)


def sync_spec(spec: SweepSpec, runs_dir: str | None, say: Callable[[str], None] = print) -> None:
    """`sweep sync`: `sync_sweep` on the spec's sweep under `runs_dir` (default: the spec's storage,
    else runs/); a UserError if that sweep has not run there."""
    root = runs_root(runs_dir, spec.storage)
    check_reachable(root, write=False)
    sweep_dir = SweepPaths.of(root, spec.name).root
    if not (sweep_dir / "sweep.json").is_file():
        raise SpecError(f"sweep '{spec.name}' has not run under {root}/ (no {sweep_dir / 'sweep.json'})")
    sync_sweep(sweep_dir, say=say)


def differences(client, run_id: str, points: Points) -> list[str]:
    """How a rung's MLflow run differs from its disk record: a missing or extra point, a step held
    twice, a result whose value differs (measurements may differ in value, not in steps)."""
    problems = []
    keys = set(client.get_run(run_id).data.metrics) | set(points)
    for key in sorted(keys):
        hist = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        steps = [s for s, _ in hist]
        disk = points.get(key, {})
        if len(steps) != len(set(steps)):
            problems.append(f"{key}: {len(steps) - len(set(steps))} step(s) held twice")
        if missing := sorted(set(disk) - set(steps)):
            problems.append(f"{key}: MLflow lacks steps {missing[:10]}")
        if extra := sorted(set(steps) - set(disk)):
            problems.append(f"{key}: MLflow holds steps not on disk {extra[:10]}")
        if not key.startswith(MEASURED):
            wrong = sorted(
                s for s, v in hist if s in disk and v != disk[s] and not (v != v and disk[s] != disk[s])
            )
            if wrong:
                problems.append(f"{key}: values differ from disk at steps {wrong[:10]}")
    return problems
