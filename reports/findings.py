"""Stage 6, findings: one line per headline series, and plain notes where a fit is weak."""

from __future__ import annotations

from reports.results import Report, ScoredForecast, Series
from reports.text import fitted_on, fmt, interval, pct


def headline_notes(report: Report) -> None:
    """Say plainly when a headline fit does not support a forecast."""
    for s in report.headline():
        if s.trend is not None and s.trend.resolved is False:
            report.notes.append(
                f"{s.label}: the {s.selection.form} trend is not resolved (exponent interval "
                f"includes 0 or points the wrong way; R²(log) {s.selected.fit.r2_log:.2f}); "
                "its forecasts are weak"
            )


def findings(report: Report) -> list[str]:
    return [finding(s, report.forecasts.rows) for s in report.headline()]


def finding(s: Series, scored: list[ScoredForecast]) -> str:
    """One line: trend resolved or not, what was fitted and its exponent, the forecast with its
    form and backtest error, and its score. The exponent is of the fitted quantity (1 - IoU for a
    bounded higher-is-better metric), so the line names it: its sign then reads right."""
    if s.selection is None:
        reasons = "; ".join(e.reason or "" for e in s.fits if not e.fitted)
        return f"{s.label}: no size law fitted ({reasons or 'no size law requested'})"
    t, sel = s.trend, s.selection
    way = "higher is better" if s.higher_is_better else "lower is better"
    state = (
        "trend points the WRONG way"
        if not t.improving
        else "trend resolved"
        if t.resolved
        else "trend unknown (no bootstrap)"
        if t.resolved is None
        else "trend NOT resolved"
    )
    on = fitted_on(s.selected.fit.target, s.metric)
    line = (
        f"{s.label}: {state} ({way}); {sel.form} fitted on {on}, exponent b = {interval(t.exponent, *t.ci)}"
    )
    f = s.forecast
    if f:
        line += (
            f"; forecast at {f.size}: {interval(f.value, f.lo, f.hi)} "
            f"({f.form}, backtest error {pct(f.backtest_error)})"
        )
        if f.caveat:  # how far it can be trusted: ratio, benchmark coverage, form agreement
            line += f" [{f.caveat}]"
    else:
        line += f"; selected {sel.form} (backtest error {pct(sel.errors[sel.form])})"
    for r in (r for r in scored if r.series == s.label and r.observed is not None):
        inside = {True: "inside", False: "OUTSIDE", None: "no interval"}[r.inside]
        line += f"; forecast of {r.size} ({r.created[:10]}) scored: observed {fmt(r.observed)}, {inside}"
    return line
