"""Stage 7, render: the report's files (results.parquet, fits.json, figures, report.md, report.html).

The Markdown and the HTML are one list of blocks (`sections`), rendered twice.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from reports import figures, lr_search, references
from reports.findings import findings
from reports.results import Report
from reports.tables import (
    FIT_HEADER,
    FORECAST_HEADER,
    SELECTION_HEADER,
    coverage_text,
    final_table,
    fit_rows,
    forecast_rows,
    selection_rows,
)
from reports.text import fmt


def render(report: Report, table: pd.DataFrame, fitted: pd.DataFrame, out: Path) -> None:
    """Write every file into `out` and list them in `report.files`. `table` is the whole results
    table (kept as results.parquet); `fitted` the rows the laws saw (an LR grid's best points)."""
    files = {name: out / name for name in ("results.parquet", "fits.json", "report.md", "report.html")}
    table.to_parquet(files["results.parquet"], index=False)
    files["fits.json"].write_text(report.dumps())
    figs = figures.write_all(report, fitted, out)
    files.update({p.name: p for p in figs})
    if report.registration:
        files["predictions.json"] = out / "predictions.json"
    blocks = sections(report, fitted, figs)
    files["report.md"].write_text(markdown(report.sweep, blocks))
    files["report.html"].write_text(to_html(report.sweep, blocks))
    report.files = files


def sections(report: Report, table: pd.DataFrame, figs: list[Path]) -> list[tuple]:
    """The report as a list of blocks, rendered to Markdown and HTML alike: figure and
    findings first, then forecasts, notes, model selection and full tables per task."""
    pngs = [p for p in figs if p.suffix == ".png"]
    lead = [p for p in pngs if p.stem == "scaling"]
    fc = report.forecasts
    out: list[tuple] = [
        (
            "p",
            f"x = {report.x}; Huber δ = {report.huber_delta:g}, summed; "
            f"{report.bootstrap} bootstrap resamples (seed {report.seed}); "
            f"{report.checkpoint} checkpoint per rung; intervals are 95% prediction intervals.",
        ),
        *[("img", p) for p in lead],
        ("h2", "Findings"),
        ("ul", findings(report) or ["no series"]),
        *reference_blocks(report),
    ]
    reg = report.registration
    if reg:
        again = "" if reg.new else ", unchanged since"
        out.append(
            (
                "p",
                f"Forecasts at {report.target.size} registered in predictions.json, sha256 {reg.sha256} "
                f"({reg.created}{again}).",
            )
        )
    if report.lr_search:
        head, *rest = lr_search.lines(report.lr_search)
        out += [("h2", "Learning-rate search"), ("p", head), ("ul", [r.strip() for r in rest])]
    out += [("h2", "Forecasts vs outcomes"), ("p", coverage_text(fc))]
    if fc.rows:
        out.append(("table", FORECAST_HEADER, forecast_rows(fc)))
    out += [("h2", "Notes"), ("ul", report.notes or ["none"])]
    sel = selection_rows(report)
    if sel:
        out += [
            ("h2", "Form selection by backtest"),
            (
                "p",
                "Each size law fitted on the smallest k rungs predicts rung k + 1, "
                "for every k leaving at least 3 rungs to fit; "
                "the form with the lowest mean error is selected (a more flexible form must win by 20%).",
            ),
            ("table", SELECTION_HEADER, sel),
        ]
    out.append(("h2", "Fits"))
    for task in dict.fromkeys(s.task for s in report.series):
        rows = fit_rows([s for s in report.series if s.task == task])
        out += [("h3", task or "(no task)"), ("table", FIT_HEADER, rows)]
    others = [p for p in pngs if p not in lead]
    if others:
        out += [("h2", "Figures"), *[("img", p) for p in others]]
    wide = final_table(table, report.series)
    if not wide.empty:
        rows = [[fmt(v) for v in r] for r in wide.itertuples(index=False)]
        out += [("h2", "Final-checkpoint results"), ("table", list(map(str, wide.columns)), rows)]
    return out


def reference_blocks(report: Report) -> list[tuple]:
    """The headline series against the reference models: findings, then every rung and reference
    ranked (nothing when the sweep has no references)."""
    if not report.references:
        return []
    rows = references.comparison_rows(report.headline(), report.references)
    out: list[tuple] = [
        ("h2", "Reference models"),
        (
            "p",
            "Frozen backbones evaluated beside the ladder with the same readouts; compared, never "
            "fitted. A rung beats a reference when it is better by more than 2 combined standard errors.",
        ),
        ("ul", report.reference_findings or ["no headline series has a reference's value"]),
    ]
    return out + ([("table", references.COMPARISON_HEADER, rows)] if rows else [])


def markdown(sweep: str, blocks: list[tuple]) -> str:
    lines = [f"# Scaling report: {sweep}", ""]
    for kind, *body in blocks:
        if kind in ("h2", "h3"):
            lines += [("## " if kind == "h2" else "### ") + body[0], ""]
        elif kind == "p":
            lines += [body[0], ""]
        elif kind == "img":
            lines += [f"![{body[0].stem}]({body[0].name})", ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in body[0]] + [""]
        else:
            header, rows = body
            lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(lines).rstrip() + "\n"


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
    "th{background:#f4f4f4}img{max-width:100%}"
)


def to_html(sweep: str, blocks: list[tuple]) -> str:
    esc = html.escape
    parts = []
    for kind, *body in blocks:
        if kind in ("h2", "h3", "p"):
            parts.append(f"<{kind}>{esc(body[0])}</{kind}>")
        elif kind == "img":  # embedded, so the file stands alone (mail it, log it as one artifact)
            p = body[0]
            parts.append(
                f'<figure><img alt="{esc(p.stem)}" '
                f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"/>'
                f"<figcaption>{esc(p.stem)}</figcaption></figure>"
            )
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in body[0]) + "</ul>")
        else:
            header, rows = body
            head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
            rows_html = "".join(
                "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>")
    title = f"Scaling report: {esc(sweep)}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>{''.join(parts)}</body></html>\n"
    )
