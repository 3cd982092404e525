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
from reports.units import format_size, parse_size

PREDICTION_TAG_PREFIX = "sweep4d.prediction."  # + sha256[:12] on the sweep's MLflow parent run
SAME_RUNG = 0.05  # a measured rung within 5% of a forecast's size is the rung it forecast


def registration(result: dict, target: dict) -> dict:
    """The forecasts document: one entry per series with a selected form."""
    preds = [
        s["forecast"] | {"series": s["label"], "task": s["task"], "mode": s["mode"], "metric": s["metric"]}
        for s in result["series"]
        if s.get("forecast")
    ]
    return {
        "sweep": result["sweep"],
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "target": target,
        "fitted_rungs": [r["rung"] for r in result["rungs"]],
        "level": 0.95,
        "predictions": preds,
    }


def register(doc: dict, report_dir: Path, store: Path) -> dict:
    """Write predictions.json and its stored copy; returns {path, sha256, created, new}.

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
    return {"path": path, "sha256": sha, "created": created, "new": new}


def load_store(store: Path) -> list[tuple[str, dict]]:
    """Every registration in the store, oldest first; a file whose hash does not match its
    name has been edited after the fact and is skipped."""
    out = []
    for p in sorted(store.glob("*.json")) if store.is_dir() else []:
        data = p.read_bytes()
        if hashlib.sha256(data).hexdigest() == p.stem:
            out.append((p.stem, json.loads(data)))
    return sorted(out, key=lambda item: item[1]["created"])


def score(store: Path, result: dict) -> dict:
    """Score every stored forecast against this report's results.

    Returns {"rows": [...], "scored", "inside", "coverage", "pending"}; a row's `observed`
    is None while its rung has no result.
    """
    rows = []
    by_label = {s["label"]: s for s in result["series"]}
    for sha, doc in load_store(store):
        t = doc["target"]
        for p in doc["predictions"]:
            obs = _observed(by_label.get(p["series"]), t)
            row = {
                "sha256": sha,
                "created": doc["created"],
                "size": t["size"],
                "N": t["N"],
                "series": p["series"],
                "task": p["task"],
                "mode": p["mode"],
                "metric": p["metric"],
                "form": p["form"],
                "value": p["value"],
                "lo": p["lo"],
                "hi": p["hi"],
                "observed": obs,
            }
            if obs is not None:
                row["error"] = obs - p["value"]
                row["rel_error"] = (obs - p["value"]) / abs(obs) if obs else None
                row["inside"] = (
                    bool(p["lo"] <= obs <= p["hi"]) if np.isfinite([p["lo"], p["hi"]]).all() else None
                )
            rows.append(row)
    judged = [r for r in rows if r.get("inside") is not None]
    inside = sum(r["inside"] for r in judged)
    return {
        "rows": rows,
        "scored": len(judged),
        "inside": inside,
        "coverage": inside / len(judged) if judged else None,
        "pending": sum(r["observed"] is None for r in rows),
    }


def _observed(series: dict | None, target: dict) -> float | None:
    """The series' value at the forecast rung (by name, else by size), if it has one."""
    if series is None:
        return None
    pts = series["points"]
    vals = [
        v
        for r, n, v in zip(pts["rung"], pts["params"], pts["value"], strict=True)
        if (target.get("rung") and r == target["rung"]) or (n and abs(n / target["N"] - 1) < SAME_RUNG)
    ]
    return float(np.mean(vals)) if vals else None


def target_of(predict: str | float | int, rungs: dict[str, float]) -> dict:
    """{"size", "N", "rung"} for `--predict`: a rung name of the table, or a size like 22B."""
    if str(predict) in rungs:
        return {
            "size": format_size(rungs[str(predict)]),
            "N": float(rungs[str(predict)]),
            "rung": str(predict),
        }
    try:
        N = parse_size(predict)
    except ValueError as e:
        raise ReportError(
            f"--predict: {e}, or name a rung ({', '.join(rungs) or 'none in the table'})"
        ) from None
    return {"size": format_size(N), "N": N, "rung": None}


def log_to_mlflow(tracking_uri: str, sweep: str, reg: dict, target: dict) -> str:
    """Record a registration on the sweep's parent run: the file under predictions/ and a
    tag naming its hash, target and date. Returns the run id."""
    from mlflow.tracking import MlflowClient

    from reports.report import parent_run

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = parent_run(client, tracking_uri, sweep)
    stored = reg["path"].parent / f"{reg['sha256']}.json"
    stored.write_bytes(reg["path"].read_bytes())
    try:
        client.log_artifact(run_id, str(stored), artifact_path="predictions")
    finally:
        stored.unlink()
    client.set_tag(
        run_id,
        PREDICTION_TAG_PREFIX + reg["sha256"][:12],
        f"sha256={reg['sha256']} target={target['size']} registered={reg['created']}",
    )
    return run_id
