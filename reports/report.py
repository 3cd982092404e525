"""`sweep report`: results table -> fits -> figures -> report.html / report.md / fits.json.

Nothing is dropped silently: failed rungs, rungs missing an eval that others have,
values a log fit cannot take and metrics with too few rungs are all named in the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.names import ROLE_TAG
from contracts.spec import X_AXES
from reports import figures
from reports.collect import BASELINE_PREFIX, ReportError, is_baseline, normalize, read_table
from reports.fit import FORMS, FitError, fit, fitted_quantity, predict
from reports.units import format_size, parse_size

SIZE_LAWS = ("powerlaw", "saturating")
FAILED = "failed"


def series_label(task: str, mode: str, metric: str) -> str:
    return f"{task}/{metric} ({mode})" if task else f"{metric} ({mode})"


def make_report(
    table: pd.DataFrame | str | Path,
    out_dir: str | Path,
    fits: list[str] | tuple[str, ...] = ("powerlaw",),
    x: str = "params",
    huber_delta: float = 1e-3,
    bootstrap: int = 1000,
    seed: int = 0,
    checkpoint: str = "final",
    log: Callable[[str], None] = print,
) -> dict:
    """Fit every (task, mode, metric) of `table` and write the report files into out_dir.

    Returns {"out_dir", "files": {name: path}, "series": [...], "notes": [...]}, the same
    content as fits.json plus the file paths.
    """

    table = read_table(table) if isinstance(table, str | Path) else normalize(table)
    fits = list(fits)
    unknown = [f for f in fits if f not in FORMS]
    if unknown:
        raise ReportError(f"unknown fit form(s) {', '.join(unknown)}; choose from {', '.join(FORMS)}")
    if x not in X_AXES:  # the spec accepts exactly these (report.x)
        raise ReportError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    if checkpoint not in ("final", "best"):
        raise ReportError(f"checkpoint must be 'final' or 'best', got {checkpoint!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    notes: list[str] = []
    failed = _failed_rungs(table, notes)
    if checkpoint == "best" and "split" not in table.columns:
        notes.append(
            "checkpoint=best needs a `split` column with validation rows; used each rung's final checkpoint"
        )
    ok = table[~table["rung"].isin(failed) & table["metric"].notna() & ~table["metric"].map(is_baseline)]
    ok = ok[ok["value"].notna()]
    rungs = table.loc[~table["rung"].isin(failed)].groupby("rung")["params"].first().sort_values()

    groups = list(ok.groupby(["task", "mode", "metric"], sort=True))
    series = []
    for i, ((task, mode, metric), g) in enumerate(groups, 1):
        label = series_label(task, mode, metric)
        hib = bool(g["higher_is_better"].iloc[0])
        missing = [r for r in rungs.index if r not in set(g["rung"])]
        if missing:
            notes.append(f"{label}: no value for rung(s) {', '.join(missing)}, which other metrics have")
        points = _size_points(g, checkpoint, hib)
        s = {
            "task": task,
            "mode": mode,
            "metric": metric,
            "label": label,
            "higher_is_better": hib,
            "missing_rungs": missing,
            "points": _records(points, ["rung", "params", "train_flops", "step", "value"]),
            "fits": [],
        }
        for form in fits:
            entry = _fit_one(
                form,
                g if form == "chinchilla" else points,
                x,
                hib,
                huber_delta,
                bootstrap,
                seed,
                label,
                notes,
            )
            s["fits"].append(entry)
            log(f"[{i}/{len(groups)}] {label} {form}: {_summary(entry)}")
        series.append(s)

    result = {
        "sweep": str(table["sweep"].iloc[0]) if len(table) else "",
        "x": x,
        "huber_delta": huber_delta,
        "bootstrap": bootstrap,
        "seed": seed,
        "checkpoint": checkpoint,
        "rungs": [{"rung": r, "params": float(p)} for r, p in rungs.items()],
        "failed_rungs": failed,
        "series": series,
        "notes": notes,
    }
    files = {
        "results.parquet": out / "results.parquet",
        "fits.json": out / "fits.json",
        "report.md": out / "report.md",
        "report.html": out / "report.html",
    }
    table.to_parquet(files["results.parquet"], index=False)
    files["fits.json"].write_text(json.dumps(result, indent=1, default=_json_default))
    figs = figures.write_all(result, table, out)
    files.update({p.name: p for p in figs})
    files["report.md"].write_text(_markdown(result, table, figs))
    files["report.html"].write_text(_html(result, table, figs))
    return {"out_dir": out, "files": files} | result


# ---------------------------------------------------------------- table -> points


def _failed_rungs(table: pd.DataFrame, notes: list[str]) -> list[str]:
    if "status" not in table.columns:
        return []
    bad = table[table["status"].astype(str).str.lower() == FAILED]
    names = []
    for rung, g in bad.groupby("rung", sort=False):
        why = (
            g["failure"].dropna().astype(str).iloc[0]
            if "failure" in g and g["failure"].notna().any()
            else "no reason recorded"
        )
        notes.append(f"rung {rung} failed ({why}); left out of every fit")
        names.append(str(rung))
    return names


def _size_points(g: pd.DataFrame, checkpoint: str, hib: bool) -> pd.DataFrame:
    """One point per rung (or a few, if repeated): its final or best-by-validation checkpoint."""
    if "split" in g.columns and g["split"].notna().any():
        val = g[g["split"] == "val"]
        test = g[g["split"] != "val"]
        main = test if len(test) else val
        if checkpoint == "best" and len(val):
            best = val.loc[(val["value"] if hib else -val["value"]).groupby(val["rung"]).idxmax()]
            steps = dict(zip(best["rung"], best["step"], strict=True))
            chosen = main[main["step"] == main["rung"].map(steps)]
            return chosen if len(chosen) else best
        g = main
    last = g.groupby("rung")["step"].transform("max")
    return g[(g["step"] == last) | last.isna()]


def _fit_one(form, pts: pd.DataFrame, x, hib, delta, bootstrap, seed, label, notes) -> dict:
    entry: dict = {"form": form, "x": "params" if form == "chinchilla" else x}
    N = pts["params" if form == "chinchilla" else x].to_numpy(float)
    D = None
    if form == "chinchilla":
        entry["D"], D = _data_seen(pts)
        if D is None:
            return entry | {
                "status": "not fitted",
                "reason": "chinchilla needs clips_seen, tokens or train_flops per checkpoint",
            }
        entry["points"] = _records(pts.assign(D=D), ["rung", "params", "step", "D", "value"])
    y = pts["value"].to_numpy(float)
    try:
        q, target = fitted_quantity(form, y, hib)
    except FitError as e:
        return entry | {"status": "not fitted", "reason": str(e)}
    bad = ~(np.isfinite(q) & (q > 0) & (N > 0)) | (False if D is None else ~(D > 0))
    if bad.any():
        excl = pts[bad]
        entry["excluded"] = _records(excl, ["rung", "step", "value"])
        where = ", ".join(
            f"{r} (step {_fmt(s)}: {_fmt(v)})"
            for r, s, v in zip(excl["rung"], excl["step"], excl["value"], strict=True)
        )
        notes.append(
            f"{label} {form}: {target} is not positive (or {entry['x']} is missing) for {where}; left out of this log-space fit"
        )
    keep = ~bad
    try:
        f = fit(
            form,
            N[keep],
            y[keep],
            None if D is None else D[keep],
            higher_is_better=hib,
            huber_delta=delta,
            bootstrap=bootstrap,
            seed=seed,
        )
    except FitError as e:
        rungs = list(dict.fromkeys(pts.loc[keep].sort_values("params")["rung"]))
        return entry | {"status": "not fitted", "reason": f"{e} (usable rungs: {', '.join(rungs) or 'none'})"}
    return entry | {"status": "fitted", "fit": f.to_dict()}


def _data_seen(pts: pd.DataFrame) -> tuple[str | None, np.ndarray | None]:
    """D for chinchilla: tokens if known, else clips seen, else training FLOPs / (6 N)."""
    for col in ("tokens", "clips_seen"):
        if col in pts.columns and pts[col].notna().all():
            return col, pts[col].to_numpy(float)
    if pts["train_flops"].notna().all():
        return "train_flops / (6 params)", (pts["train_flops"] / (6 * pts["params"])).to_numpy(float)
    return None, None


def _records(df: pd.DataFrame, cols: list[str]) -> dict[str, list]:
    return {c: [_plain(v) for v in df[c]] for c in cols if c in df.columns}


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


# --------------------------------------------------------------------- summaries


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float | int | np.floating) else str(v)


def _param_text(f: dict) -> list[tuple[str, str]]:
    out = []
    for k, v in f["params"].items():
        ci = f["ci"].get(k)
        out.append((k, f"{_fmt(v)} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else _fmt(v)))
    return out


def _extrap_text(f: dict) -> str:
    e = f.get("extrapolation") or {}
    if "rel_error" not in e:
        return e.get("error", "–")
    return f"{e['rel_error']:+.2%} at {format_size(e['held_out_N'])} (pred {_fmt(e['predicted'])}, actual {_fmt(e['actual'])})"


def _summary(entry: dict) -> str:
    if entry["status"] != "fitted":
        return f"not fitted: {entry['reason']}"
    f = entry["fit"]
    return (
        ", ".join(f"{k} = {v}" for k, v in _param_text(f))
        + f"; R²(log) {f['r2_log']:.3f}; leave-largest-out {_extrap_text(f)}"
    )


def _fit_rows(result: dict) -> list[list[str]]:
    rows = []
    for s in result["series"]:
        for e in s["fits"]:
            if e["status"] == "fitted":
                f = e["fit"]
                rows.append(
                    [
                        s["label"],
                        e["form"],
                        str(f["n_rungs"]),
                        "; ".join(f"{k} = {v}" for k, v in _param_text(f)),
                        f"{f['r2_log']:.3f}",
                        f"{f['loss']:.4g}",
                        _extrap_text(f),
                        f["target"],
                    ]
                )
            else:
                rows.append([s["label"], e["form"], "–", f"not fitted: {e['reason']}", "–", "–", "–", "–"])
    return rows


FIT_HEADER = [
    "series",
    "form",
    "rungs",
    "parameters [95% bootstrap CI]",
    "R² (log)",
    "Huber loss",
    "leave-largest-out error",
    "fitted on",
]


def _final_table(table: pd.DataFrame) -> pd.DataFrame:
    """Final-checkpoint values: one row per series, one column per rung (smallest first), and the
    series' trivial baseline beside them (it depends on the test data only, not on the rung)."""
    t = table[table["metric"].notna()]
    if t.empty:
        return pd.DataFrame()
    last = t.groupby(["rung", "task", "mode", "metric"])["step"].transform("max")
    t = t[(t["step"] == last) | last.isna()]
    base = t[t["metric"].map(is_baseline)]
    t = t[~t["metric"].map(is_baseline)]
    label = lambda d, metric: [
        series_label(a, b, c) for a, b, c in zip(d["task"], d["mode"], metric, strict=True)
    ]  # noqa: E731
    t = t.assign(series=label(t, t["metric"]))
    rungs = t.drop_duplicates("rung").sort_values("params")
    wide = t.pivot_table(index="series", columns="rung", values="value", aggfunc="mean")[list(rungs["rung"])]
    wide.columns = [f"{r} ({format_size(p)})" for r, p in zip(rungs["rung"], rungs["params"], strict=True)]
    if not base.empty:
        stripped = base["metric"].str.slice(len(BASELINE_PREFIX))
        wide["trivial baseline"] = base.assign(series=label(base, stripped)).groupby("series")["value"].mean()
    return wide.reset_index()


# ------------------------------------------------------------------------ render


def _markdown(result: dict, table: pd.DataFrame, figs: list[Path]) -> str:
    lines = [
        f"# Scaling report: {result['sweep']}",
        "",
        f"x = {result['x']}; Huber δ = {result['huber_delta']:g}, summed; {result['bootstrap']} bootstrap resamples "
        f"(seed {result['seed']}); {result['checkpoint']} checkpoint per rung.",
        "",
    ]
    lines += ["## Fits", "", "| " + " | ".join(FIT_HEADER) + " |", "|" + " --- |" * len(FIT_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _fit_rows(result)]
    lines += ["", "## Notes", ""] + ([f"- {n}" for n in result["notes"]] or ["- none"])
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figs if p.suffix == ".png"]
    wide = _final_table(table)
    if not wide.empty:
        lines += [
            "",
            "## Final-checkpoint results",
            "",
            "| " + " | ".join(map(str, wide.columns)) + " |",
            "|" + " --- |" * len(wide.columns),
        ]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in wide.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _html(result: dict, table: pd.DataFrame, figs: list[Path]) -> str:
    import base64
    import html

    esc = html.escape

    def tab(header, rows):
        head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    # Images are embedded so the file stands alone (mail it, log it as one artifact).
    imgs = "".join(
        f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"/>'
        f"<figcaption>{esc(p.stem)}</figcaption></figure>"
        for p in figs
        if p.suffix == ".png"
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in result["notes"]) or "<li>none</li>"
    wide = _final_table(table)
    final = (
        tab(wide.columns, [[_fmt(v) for v in r] for r in wide.itertuples(index=False)])
        if not wide.empty
        else "<p>no results</p>"
    )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f4f4f4}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Scaling report: {esc(result['sweep'])}</title>"
        f"<style>{style}</style></head><body><h1>Scaling report: {esc(result['sweep'])}</h1>"
        f"<p>x = {esc(result['x'])}; Huber δ = {result['huber_delta']:g}, summed; {result['bootstrap']} bootstrap resamples "
        f"(seed {result['seed']}); {esc(result['checkpoint'])} checkpoint per rung.</p>"
        f"<h2>Fits</h2>{tab(FIT_HEADER, _fit_rows(result))}<h2>Notes</h2><ul>{notes}</ul>"
        f"<h2>Figures</h2>{imgs}<h2>Final-checkpoint results</h2>{final}</body></html>\n"
    )


# ------------------------------------------------------------- MLflow, predictions


def log_report_to_mlflow(tracking_uri: str, sweep: str, out_dir: str | Path) -> str:
    """Log the report files under `report/` on the sweep's parent run; returns its run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(sweep)
    runs = (
        client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'", max_results=1)
        if exp
        else []
    )
    if not runs:
        raise ReportError(f"no parent run (tag {ROLE_TAG}=sweep) for sweep {sweep!r} in {tracking_uri}")
    run_id = runs[0].info.run_id
    client.log_artifacts(run_id, str(out_dir), artifact_path="report")
    return run_id


def predict_from_fits(fits_json: str | Path | dict, size: str | float | int) -> list[dict]:
    """Predicted value with its 95% interval at `size` ("22B", "300M", or a number) for every
    fitted law in a fits.json. Chinchilla laws are read at the most data any rung saw."""
    try:
        N = parse_size(size)
    except ValueError as e:
        raise ReportError(str(e)) from None
    if isinstance(fits_json, dict):
        result = fits_json
    else:
        try:
            result = json.loads(Path(fits_json).read_text())
        except (OSError, ValueError) as e:
            raise ReportError(f"{fits_json}: cannot read fits: {e}") from None
    rows = []
    for s in result.get("series", []):
        for e in s["fits"]:
            if e["status"] != "fitted":
                continue
            D = max(e["points"]["D"]) if e["form"] == "chinchilla" else None
            value, lo, hi = (float(a[0]) for a in predict(e["fit"], N, D))
            rows.append(
                {
                    "series": s["label"],
                    "task": s["task"],
                    "mode": s["mode"],
                    "metric": s["metric"],
                    "form": e["form"],
                    "x": e["x"],
                    "N": N,
                    "size": format_size(N),
                    "D": D,
                    "value": value,
                    "lo": lo,
                    "hi": hi,
                }
            )
    return rows
