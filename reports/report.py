"""`sweep report`: a results table -> typed results (reports.results) -> report files -> MLflow.

The stages, one module each:

1. collect         reports.collect    the results table, from MLflow or a CSV/Parquet file
   references      reports.references reference models' rows split off: compared, never fitted
2. select points   reports.points     one Series per (task, mode, metric, dataset); failed rungs named
3. fit             reports.fitting    every requested form per series, size laws backtested
4. select form     reports.selection  the best size law per series by backtest; trend; forecast
5. forecasts       reports.forecasts  register the forecasts at --predict; score every stored one
6. findings        reports.findings   one line per headline series; notes where a fit is weak;
                   reports.references the headline series against each reference model
7. render          reports.render     fits.json, figures, report.md, report.html
8. publish         reports.publish    the files and a new registration onto the sweep's MLflow run

Nothing is dropped silently: failed rungs, rungs missing an eval that others have, values a log
fit cannot take and metrics with too few rungs are all named in the report's notes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from contracts.spec import X_AXES
from contracts.storage import working_copy
from reports import lr_search, references
from reports.collect import ReportError, collect_mlflow, normalize, read_table
from reports.findings import headline_notes
from reports.fit import predict
from reports.fitting import AUTO, FitSettings, expand_forms, fit_series
from reports.forecasts import register_forecasts, score, target_of
from reports.points import select_points
from reports.publish import publish
from reports.render import render
from reports.results import Report
from reports.selection import select
from reports.text import selection_text
from reports.units import format_size, parse_size

Log = Callable[[str], None]


@dataclass
class ReportRequest:
    """What `sweep report` asks for: where the results are (a file, or a sweep in MLflow), where the
    report and the forecast store go, and how to fit."""

    out_dir: Path
    store: Path  # registered forecasts: runs/<sweep>/predictions, or beside a --from report
    forms: list[str]
    from_file: Path | None = None
    sweep: str | None = None
    tracking_uri: str | None = None
    x: str = "params"
    huber_delta: float = 1e-3
    bootstrap: int = 1000
    seed: int = 0
    checkpoint: str = "final"
    predict: str | float | None = None  # a size (22B) or a rung name
    search_metric: str | None = None


def run_report(request: ReportRequest, log: Log = print) -> Report:
    """The whole of `sweep report`: collect, make the report (on a store: in a local working copy,
    uploaded when done), and publish it on the sweep's MLflow parent run."""
    if request.from_file is not None:
        table: pd.DataFrame | Path = request.from_file
    else:
        log(f"collecting sweep '{request.sweep}' from {request.tracking_uri}")
        table = collect_mlflow(request.tracking_uri, request.sweep)
    with working_copy(request.out_dir) as out, working_copy(request.store) as store:
        report = make_report(
            table,
            out,
            fits=request.forms,
            x=request.x,
            huber_delta=request.huber_delta,
            bootstrap=request.bootstrap,
            seed=request.seed,
            checkpoint=request.checkpoint,
            predict=request.predict,
            predictions_dir=store,
            search_metric=request.search_metric,
            log=log,
        )
    if request.sweep:
        publish(report, request.tracking_uri, request.sweep, out)
    return report


def make_report(table: pd.DataFrame | str | Path, out_dir: str | Path, **settings) -> Report:
    """Fit every (task, mode, metric) of `table` and write the report files into out_dir
    (settings: those of `fit_report`)."""
    report, table, fitted = fit_report(table, out_dir, **settings)
    render(report, table, fitted, Path(out_dir))
    return report


def fit_report(
    table: pd.DataFrame | str | Path,
    out_dir: str | Path,
    fits: list[str] | tuple[str, ...] = (AUTO,),
    x: str = "params",
    huber_delta: float = 1e-3,
    bootstrap: int = 1000,
    seed: int = 0,
    checkpoint: str = "final",
    predict: str | float | None = None,
    predictions_dir: str | Path | None = None,
    search_metric: str | None = None,
    log: Log = print,
) -> tuple[Report, pd.DataFrame, pd.DataFrame]:
    """Stages 1-6 on `table`: the Report, the whole table (reference rows included), and the
    rows the laws were fitted on.

    `predict` (a size like 22B or a rung name) registers the selected forms' forecasts;
    `predictions_dir` is the store of registered forecasts, scored whenever their rung has
    results (default: `predictions/` beside out_dir). A sweep with an LR grid (spec `search`) is
    fitted on each size's best grid point, ranked by held-out loss or `search_metric`.
    """
    forms = expand_forms(fits)
    _check(x, checkpoint)
    table = read_table(table) if isinstance(table, str | Path) else normalize(table)
    ladder, refs = references.split(table)  # reference models are compared, never fitted
    search = lr_search.analyse(ladder, search_metric)
    fitted = lr_search.best_points_only(ladder, search)
    out = Path(out_dir)
    store = Path(predictions_dir) if predictions_dir is not None else out.parent / "predictions"
    sizes = fitted.groupby("rung")["params"].first().to_dict()
    target = target_of(predict, sizes) if predict is not None else None
    out.mkdir(parents=True, exist_ok=True)
    how = FitSettings(x, huber_delta, bootstrap, seed)
    sweep = str(fitted["sweep"].iloc[0]) if len(fitted) else ""
    report = Report(sweep, x, huber_delta, bootstrap, seed, checkpoint, target=target, lr_search=search)
    report.references = references.reference_points(refs)

    points = select_points(fitted, checkpoint, report.notes)
    report.rungs = [{"rung": r, "params": float(p)} for r, p in points.rungs.items()]
    report.failed_rungs = points.failed
    for i, item in enumerate(points.series, 1):
        step = f"[{i}/{len(points.series)}]"
        fit_series(item, forms, how, report.notes, log=lambda line, step=step: log(f"{step} {line}"))
        select(item.series, target if x == "params" else None, report.notes)
        if item.series.selection:
            log(f"{step} {item.series.label}: selected {selection_text(item.series)}")
        report.series.append(item.series)
    report.notes += [f"LR search: {w}" for w in (search or {}).get("warnings", [])]
    register_forecasts(report, sizes, out, store)
    report.forecasts = score(store, report)
    headline_notes(report)
    report.reference_findings = references.findings(report.headline(), report.references, x)
    return report, table, fitted


def _check(x: str, checkpoint: str) -> None:
    if x not in X_AXES:  # the spec accepts exactly these (report.x)
        raise ReportError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    if checkpoint not in ("final", "best"):
        raise ReportError(f"checkpoint must be 'final' or 'best', got {checkpoint!r}")


def predict_from_fits(fits_json: str | Path | dict | Report, size: str | float | int) -> list[dict]:
    """Predicted value with its 95% interval at `size` ("22B", "300M", or a number) for every
    fitted law in a fits.json (of any schema). Chinchilla laws are read at the most data any
    rung saw."""
    try:
        N = parse_size(size)
    except ValueError as e:
        raise ReportError(str(e)) from None
    report = fits_json if isinstance(fits_json, Report) else _read_fits(fits_json)
    rows = []
    for s in report.series:
        for e in (e for e in s.fits if e.fitted):
            D = max(e.points["D"]) if e.form == "chinchilla" else None
            value, lo, hi = (float(a[0]) for a in predict(e.fit, N, D))
            rows.append(
                {"series": s.label, "task": s.task, "mode": s.mode, "metric": s.metric, "form": e.form}
                | {"x": e.x, "N": N, "size": format_size(N), "D": D, "value": value, "lo": lo, "hi": hi}
                | {"selected": s.selection is not None and s.selection.form == e.form}
            )
    return rows


def _read_fits(fits_json: str | Path | dict) -> Report:
    if isinstance(fits_json, dict):
        return Report.from_json(fits_json)
    try:
        return Report.load(fits_json)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{fits_json}: cannot read fits: {e}") from None
