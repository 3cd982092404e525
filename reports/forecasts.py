"""Pre-registered forecasts: written before the rung runs, hashed, kept, scored when it lands.

`sweep report --predict 22B` writes the selected form's prediction and 95% interval for
every series into the report's predictions.json and keeps a copy named by its sha256 in the
sweep's store (runs/<sweep>/predictions/<sha256>.json), which only ever grows. Every later
report reads the whole store and scores each forecast whose rung has results: its error,
whether the value landed inside the interval, and the running coverage over all of them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from reports.collect import ReportError
from reports.results import ForecastScores, Registration, Report, ScoredForecast, Series, Target
from reports.units import format_size, parse_size

PREDICTION_TAG_PREFIX = "sweep4d.prediction."  # + sha256[:12] on the sweep's MLflow parent run
PREDICTED = ("series", "task", "mode", "metric", "form", "value", "lo", "hi")  # read from a registration
SAME_RUNG = 0.05  # a measured rung within 5% of a forecast's size is the rung it forecast


def register_forecasts(report: Report, sizes: dict[str, float], out: Path, store: Path) -> None:
    """Stage 5a: register the selected forms' forecasts at the target, unless the target was
    measured already (a forecast of a measured rung is not a forecast: `sizes` are the table's
    rungs, failed ones included) or x is not size."""
    target = report.target
    if target is None:
        return
    if report.x != "params":
        report.notes.append("--predict forecasts sizes; with x = train_flops no forecast was registered")
        return
    if (
        target.rung in sizes
        if target.rung
        else any(abs(n / target.N - 1) < SAME_RUNG for n in sizes.values())
    ):
        report.notes.append(
            f"{target.size} already has results: a forecast of it is not a forecast, so none was registered"
        )
        return
    report.registration = register(registration(report), out, store)


def registration(report: Report) -> dict:
    """The forecasts document: one entry per series with a selected form."""
    preds = [
        s.forecast.to_json() | {"series": s.label, "task": s.task, "mode": s.mode, "metric": s.metric}
        for s in report.series
        if s.forecast
    ]
    return {
        "sweep": report.sweep,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "target": report.target.to_json(),
        "fitted_rungs": [r["rung"] for r in report.rungs],
        "level": 0.95,
        "predictions": preds,
    }


def register(doc: dict, report_dir: Path, store: Path) -> Registration:
    """Write predictions.json and its stored copy.

    The same forecasts made again (same target, same numbers) keep their first registration
    and date, so re-running a report does not count a forecast twice.
    """
    store.mkdir(parents=True, exist_ok=True)
    for sha, old in load_store(store):
        if old["target"] == doc["target"] and old["predictions"] == json.loads(
            json.dumps(doc["predictions"])
        ):
            data, created, new = (store / f"{sha}.json").read_bytes(), old["created"], False
            break
    else:
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        sha, created, new = hashlib.sha256(data).hexdigest(), doc["created"], True
        (store / f"{sha}.json").write_bytes(data)
    path = report_dir / "predictions.json"
    path.write_bytes(data)
    return Registration(path, sha, created, new)


def load_store(store: Path) -> list[tuple[str, dict]]:
    """Every registration in the store, oldest first; a file whose hash does not match its
    name has been edited after the fact and is skipped."""
    out = []
    for p in sorted(store.glob("*.json")) if store.is_dir() else []:
        data = p.read_bytes()
        if hashlib.sha256(data).hexdigest() == p.stem:
            out.append((p.stem, json.loads(data)))
    return sorted(out, key=lambda item: item[1]["created"])


def score(store: Path, report: Report) -> ForecastScores:
    """Stage 5b: score every stored forecast against this report's results; a row's `observed`
    is None while its rung has no result. Registrations written by any version are read."""
    rows = []
    by_label = {s.label: s for s in report.series}
    for sha, doc in load_store(store):
        t = doc["target"]
        for p in doc["predictions"]:
            row = ScoredForecast(sha, doc["created"], t["size"], t["N"], *(p[k] for k in PREDICTED))
            row.observed = obs = _observed(by_label.get(p["series"]), t)
            if obs is not None:
                row.error = obs - p["value"]
                row.rel_error = (obs - p["value"]) / abs(obs) if obs else None
                row.inside = (
                    bool(p["lo"] <= obs <= p["hi"]) if np.isfinite([p["lo"], p["hi"]]).all() else None
                )
            rows.append(row)
    judged = [r for r in rows if r.inside is not None]
    inside = sum(r.inside for r in judged)
    return ForecastScores(
        rows=rows,
        scored=len(judged),
        inside=inside,
        coverage=inside / len(judged) if judged else None,
        pending=sum(r.observed is None for r in rows),
    )


def _observed(series: Series | None, target: dict) -> float | None:
    """The series' value at the forecast rung (by name, else by size), if it has one."""
    if series is None:
        return None
    pts = series.points
    vals = [
        v
        for r, n, v in zip(pts["rung"], pts["params"], pts["value"], strict=True)
        if (target.get("rung") and r == target["rung"]) or (n and abs(n / target["N"] - 1) < SAME_RUNG)
    ]
    return float(np.mean(vals)) if vals else None


def target_of(predict: str | float | int, rungs: dict[str, float]) -> Target:
    """The target of `--predict`: a rung name of the table, or a size like 22B."""
    if str(predict) in rungs:
        return Target(format_size(rungs[str(predict)]), float(rungs[str(predict)]), str(predict))
    try:
        N = parse_size(predict)
    except ValueError as e:
        raise ReportError(
            f"--predict: {e}, or name a rung ({', '.join(rungs) or 'none in the table'})"
        ) from None
    return Target(format_size(N), N, None)
