"""What `sweep report` prints when the report is written: where it is, the selected form per
series, the predictions at --predict, and the forecasts scored so far."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from reports import lr_search
from reports.report import predict_from_fits
from reports.results import Report
from reports.tables import coverage_text
from reports.uncertainty import LOW_COVERAGE, MISSES_LARGEST


def summary(report: Report, report_at: Path, predict: str | None, size: str | float | None) -> list:
    """Lines and rich tables, in the order they are printed."""
    out: list = lr_search.lines(report.lr_search) if report.lr_search else []
    fitted = sum(e.fitted for s in report.series for e in s.fits)
    out.append(
        f"report: {report_at / 'report.html'} ({fitted} fitted laws; "
        "figures scaling.png, compute.png; fits.json)"
    )
    out.append(_selection_table(report))
    out += [f"reference: {line}" for line in report.reference_findings]
    if predict:
        out.append(_predictions_table(report, predict, size))
        out += _low_coverage_warning(report)
        out += _misses_largest_rung_warning(report)
        reg = report.registration
        if reg:
            out.append(f"registered: {reg.path} sha256 {reg.sha256} ({reg.created})")
    if report.forecasts.rows:
        out.append(_forecasts_table(report))
    out.append(coverage_text(report.forecasts))
    return out


def _low_coverage_warning(report: Report) -> list[str]:
    """One line when a forecast reaches where the benchmark's 95% intervals covered under 80%."""
    low = [
        s.forecast
        for s in report.series
        if s.forecast and s.forecast.calibrated_coverage is not None
        and s.forecast.calibrated_coverage < LOW_COVERAGE
    ]  # fmt: skip
    if not low:
        return []
    f = low[0]
    return [
        f"warning: {f.size} is {f.extrapolation_ratio:.0f}x beyond the largest rung; at that distance "
        f"the benchmark's 95% intervals covered only {f.calibrated_coverage:.0%} (docs/forecasting.md)"
    ]


def _misses_largest_rung_warning(report: Report) -> list[str]:
    """One line naming the series whose averaged law passes far from their largest fitted rung: on
    the public ladders such forecasts erred several times more than the others."""
    missed = [s.label for s in report.series if s.forecast and s.forecast.misses_largest_rung]
    if not missed:
        return []
    named = ", ".join(missed[:3]) + (f" and {len(missed) - 3} more" if len(missed) > 3 else "")
    return [
        f"warning: the fitted law misses the largest rung by {MISSES_LARGEST:.0%} or more of the rungs' "
        f"range for {named}: the forecast may miss a bend there (docs/forecasting.md)"
    ]


def _table(title: str, *columns: str) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    return t


def _selection_table(report: Report) -> Table:
    t = _table("selected form per series (expanding-window backtest)", "series", "selected", "backtest error")
    t.add_column("trend")
    for s in (s for s in report.series if s.selection):
        errs = ", ".join(f"{k} {v:.1%}" if v is not None else f"{k} –" for k, v in s.selection.errors.items())
        trend = {True: "resolved", False: "not resolved", None: "unknown"}[s.trend.resolved]
        t.add_row(s.label, s.selection.form, errs, trend)
    return t


def _predictions_table(report: Report, predict: str, size: str | float) -> Table:
    t = _table(f"predictions at {predict}", "metric", "form", "predicted", "95% interval")
    for r in predict_from_fits(report, size):
        selected = " (selected)" if r["selected"] else ""
        t.add_row(r["series"], r["form"] + selected, f"{r['value']:.4g}", f"[{r['lo']:.4g}, {r['hi']:.4g}]")
    return t


def _forecasts_table(report: Report) -> Table:
    columns = ("registered", "series", "form", "target", "forecast [95%]", "observed", "inside")
    t = _table("forecasts vs outcomes", *columns)
    for r in report.forecasts.rows:
        inside = "pending" if r.observed is None else {True: "yes", False: "NO", None: "–"}[r.inside]
        observed = "–" if r.observed is None else f"{r.observed:.4g}"
        forecast = f"{r.value:.4g} [{r.lo:.4g}, {r.hi:.4g}]"
        t.add_row(r.created[:10], r.series, r.form, r.size, forecast, observed, inside)
    return t
