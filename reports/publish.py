"""Stage 8, publish: the report's files and any new forecast registration onto the sweep's MLflow
parent run. (The store copy is the caller's `working_copy`: the files are written locally and
uploaded when the report is done.)"""

from __future__ import annotations

from pathlib import Path

from contracts.names import ROLE_TAG
from reports.collect import ReportError
from reports.forecasts import PREDICTION_TAG_PREFIX
from reports.results import Registration, Report


def publish(report: Report, tracking_uri: str, sweep: str, out_dir: Path) -> None:
    log_report_to_mlflow(tracking_uri, sweep, out_dir)
    if report.registration is not None and report.registration.new:
        reg = report.registration
        log_registration(tracking_uri, sweep, reg, out_dir / reg.path.name, report.target.size)


def log_report_to_mlflow(tracking_uri: str, sweep: str, out_dir: str | Path) -> str:
    """Log the report files under `report/` on the sweep's parent run; returns its run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = parent_run(client, tracking_uri, sweep)
    client.log_artifacts(run_id, str(out_dir), artifact_path="report")
    return run_id


def parent_run(client, tracking_uri: str, sweep: str) -> str:
    """The run id of the sweep's parent run (tag sweep4d.role=sweep)."""
    exp = client.get_experiment_by_name(sweep)
    runs = (
        client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'", max_results=1)
        if exp
        else []
    )
    if not runs:
        raise ReportError(f"no parent run (tag {ROLE_TAG}=sweep) for sweep {sweep!r} in {tracking_uri}")
    return runs[0].info.run_id


def log_registration(tracking_uri: str, sweep: str, reg: Registration, path: Path, size: str) -> str:
    """Record a registration on the sweep's parent run: the file (`path`, the report's
    predictions.json) under predictions/<sha256>.json and a tag naming its hash, target and date.
    Returns the run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = parent_run(client, tracking_uri, sweep)
    stored = path.parent / f"{reg.sha256}.json"
    stored.write_bytes(path.read_bytes())
    try:
        client.log_artifact(run_id, str(stored), artifact_path="predictions")
    finally:
        stored.unlink()
    client.set_tag(
        run_id,
        PREDICTION_TAG_PREFIX + reg.sha256[:12],
        f"sha256={reg.sha256} target={size} registered={reg.created}",
    )
    return run_id
