"""The sweep's MLflow runs, opened by the driver before it trains anything: one tracker actor (the
only MLflow writer) on the driver's node, the sweep's parent run, and one run per rung, each
recorded on disk (sweep.json, the rung's info.json) so that reports and reconciles find them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from contracts.layout import RungPaths, SweepPaths, write_json
from contracts.names import GIT_TAG, SEARCH_TAG, SPEC_HASH_TAG
from contracts.spec import RungConfig, SweepSpec
from contracts.storage import local_file, uri_of
from orchestrator.state import git_commit
from orchestrator.tracking import Tracker, absolute_tracking_uri, rung_params, sqlite_path

TRACKER_RESTARTS = 20


@dataclass
class OpenedTracking:
    tracker: object  # the Tracker actor's handle
    incarnation: object  # what its ping() answers; a new one means Ray restarted it
    parent: str  # the sweep's MLflow run id
    run_ids: dict[str, str]  # rung key -> MLflow run id


def open_tracking(
    spec: SweepSpec,
    spec_path: Path,
    rungs: list[RungConfig],
    root,
    sweep_paths: SweepPaths,
    driver_started: float,
) -> OpenedTracking:
    """driver_started: when the driver began (sweep.json keeps it for `sweep simulate --calibrate`)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    uri = absolute_tracking_uri(spec.tracking.uri)
    if (db := sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    artifacts = uri_of(root / "mlartifacts")
    here = ray.get_runtime_context().get_node_id()
    # The one MLflow writer, on this node because the SQLite file is here. Ray restarts it if it
    # dies and retries the calls it had not answered (its writes are idempotent).
    actor = ray.remote(num_cpus=0, max_restarts=TRACKER_RESTARTS, max_task_retries=-1)(Tracker)
    tracker = actor.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote(uri, artifacts)
    incarnation = ray.get(tracker.ping.remote())
    commit = git_commit()
    parent = ray.get(
        tracker.sweep_run.remote(
            spec.name,
            {SPEC_HASH_TAG: spec.spec_hash(), GIT_TAG: commit},
            {"spec": str(spec_path), "rungs": len(spec.ladder)},
        )
    )
    write_json(
        sweep_paths.sweep_json,
        {
            "spec": str(Path(spec_path).resolve()),
            "spec_hash": spec.spec_hash(),
            "tracking_uri": uri,
            "parent_run_id": parent,
            "started": time.time(),
            "driver_started": driver_started,
            "resolved": spec.model_dump(mode="json"),
        },
    )
    spec_record = str(local_file(sweep_paths.sweep_json))
    ray.get(tracker.log_artifact.remote(parent, spec_record, "spec"))
    run_ids = {}
    for r in rungs:
        tags = {SEARCH_TAG: r.search_of} if r.search_of else None
        run_id = ray.get(
            tracker.rung_run.remote(spec.name, parent, r.key, r.name, r.run_name, rung_params(r), tags)
        )
        paths = RungPaths.for_rung(r, root)
        write_json(
            paths.info,
            {
                "key": r.key,
                "hash": r.hash,
                "identity": r.identity(),
                "config": r.to_dict(),
                "git_commit": commit,
                "mlflow_run_id": run_id,
            },
        )
        run_ids[r.key] = run_id

    return OpenedTracking(tracker, incarnation, parent, run_ids)
