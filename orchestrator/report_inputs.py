"""What `sweep report` reports on: a --from file, or a sweep (named by its spec, else the most recent
under runs/) whose MLflow record is first made whole from the disk record (orchestrator.reconcile).
The report itself is made by reports.report.run_report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from contracts.layout import most_recent_sweep, read_json
from contracts.spec import SweepSpec
from reports.collect import ReportError
from reports.fitting import expand_forms
from reports.report import ReportRequest


def report_request(
    spec: SweepSpec | None,
    root: Path,
    fits: list[str] | None,
    from_file: Path | None,
    out_dir: Path | None,
    predict: str | None,
    say: Callable[[str], None],
    **fitting,
) -> ReportRequest:
    """The request for `sweep report`; syncs the sweep's MLflow record first. `fits`: the --fit
    options (repeated or comma-separated; default the spec's report.fits, else auto); `fitting`:
    bootstrap, huber_delta, checkpoint, seed."""
    from orchestrator.reconcile import sync_sweep
    from orchestrator.tracking import absolute_tracking_uri

    default = spec.report.fits if spec is not None else ["auto"]
    forms = [f for item in fits or default for f in item.split(",") if f]
    expand_forms(forms)  # an unknown form is an error before any work
    settings = dict(forms=forms, predict=predict, **fitting)
    if spec is not None:
        settings |= {"x": spec.report.x, "search_metric": spec.search.metric if spec.search else None}
        if predict in {r.name for r in spec.rungs()}:
            settings["predict"] = spec.rung(predict).encoder_params  # a rung of the spec not run yet
    if from_file is not None:
        report_dir = out_dir or root / f"from-{from_file.stem}" / "report"
        return ReportRequest(report_dir, report_dir.parent / "predictions", from_file=from_file, **settings)
    if spec is not None:
        sweep, uri = spec.name, absolute_tracking_uri(spec.tracking.uri)
    else:
        recent = most_recent_sweep(root)
        info = read_json(recent / "sweep.json") if recent else None
        if not info:
            raise ReportError(
                f"no sweep found under {root}/: run `sweep run SPEC` first, or pass a spec or --from FILE"
            )
        sweep, uri = recent.name, info["tracking_uri"]
    if (root / sweep / "sweep.json").is_file():  # MLflow first made whole from the disk record
        sync_sweep(root / sweep, say=say, tracking_uri=uri)
    out = out_dir or root / sweep / "report"
    return ReportRequest(out, root / sweep / "predictions", sweep=sweep, tracking_uri=uri, **settings)
