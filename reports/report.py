"""`sweep report`: results table -> fits -> figures -> report.html / report.md / fits.json.

Nothing is dropped silently: failed rungs, rungs missing an eval that others have,
values a log fit cannot take and metrics with too few rungs are all named in the report.
Per series, the size laws are backtested and the best one is selected (`--fit auto`);
with `predict`, its forecast is registered (reports.forecasts) and scored when the rung lands.
The report leads with the figure and one line of findings per headline series.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.names import ROLE_TAG, SYNTHETIC
from contracts.spec import X_AXES
from reports import figures, forecasts, lr_search, references
from reports.collect import BASELINE_PREFIX, ReportError, is_baseline, normalize, read_table
from reports.fit import FORMS, SIZE_LAWS, FitError, backtest, fit, fitted_quantity, predict, select_form
from reports.units import format_size, parse_size

FAILED = "failed"
AUTO = "auto"  # every size law, backtested; the best is selected per series
BACKTEST_BOOTSTRAP = 200  # resamples per backtest window: enough for a 95% interval's coverage


def expand_forms(fits) -> list[str]:
    """The forms to fit: `auto` means every size law. Unknown names are a ReportError."""
    out: list[str] = []
    for f in fits:
        for name in SIZE_LAWS if f == AUTO else (f,):
            if name not in FORMS:
                raise ReportError(f"unknown fit form {name!r}; choose from {AUTO}, {', '.join(FORMS)}")
            if name not in out:
                out.append(name)
    return out


def series_label(task: str, mode: str, metric: str, dataset: str = SYNTHETIC) -> str:
    label = f"{task}/{metric} ({mode})" if task else f"{metric} ({mode})"
    return label if dataset == SYNTHETIC else f"{label} [{dataset}]"  # eval data on disk: its own series


def make_report(
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
    log: Callable[[str], None] = print,
) -> dict:
    """Fit every (task, mode, metric) of `table` and write the report files into out_dir.

    `predict` (a size like 22B or a rung name) registers the selected forms' forecasts there;
    `predictions_dir` is the store of registered forecasts, scored whenever their rung has
    results (default: `predictions/` beside out_dir). A sweep with an LR grid (spec `search`) is
    fitted on each size's best grid point, ranked by held-out loss or `search_metric`.
    Returns {"out_dir", "files": {name: path}, "series": [...], "notes": [...], "forecasts",
    "registration"}, the same content as fits.json plus the file paths.
    """

    fits = expand_forms(fits)
    table = read_table(table) if isinstance(table, str | Path) else normalize(table)
    fits = list(fits)
    unknown = [f for f in fits if f not in FORMS]
    if unknown:
        raise ReportError(f"unknown fit form(s) {', '.join(unknown)}; choose from {', '.join(FORMS)}")
    if x not in X_AXES:  # the spec accepts exactly these (report.x)
        raise ReportError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    if checkpoint not in ("final", "best"):
        raise ReportError(f"checkpoint must be 'final' or 'best', got {checkpoint!r}")
    full_table = table
    table, refs = references.split(table)  # reference models: drawn and compared, never fitted
    refs = references.baseline_free(refs)
    search = lr_search.analyse(table, search_metric)
    table = lr_search.best_points_only(table, search)
    out = Path(out_dir)
    store = Path(predictions_dir) if predictions_dir is not None else out.parent / "predictions"
    rung_sizes = table.groupby("rung")["params"].first().to_dict()
    target = forecasts.target_of(predict, rung_sizes) if predict is not None else None
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

    groups = list(ok.groupby(["task", "mode", "metric", "dataset"], sort=True))
    series = []
    for i, ((task, mode, metric, dataset), g) in enumerate(groups, 1):
        label = series_label(task, mode, metric, dataset)
        hib = bool(g["higher_is_better"].iloc[0])
        bounded = bool(g["bounded"].iloc[0]) if "bounded" in g else False
        missing = [r for r in rungs.index if r not in set(g["rung"])]
        if missing:
            notes.append(f"{label}: no value for rung(s) {', '.join(missing)}, which other metrics have")
        points = _size_points(g, checkpoint, hib)
        s = {
            "task": task,
            "mode": mode,
            "metric": metric,
            "dataset": dataset,
            "label": label,
            "higher_is_better": hib,
            "bounded": bounded,
            "missing_rungs": missing,
            "points": _records(points, ["rung", "params", "train_flops", "step", "value", "se"]),
            "fits": [],
        }
        for form in fits:
            entry = _fit_one(
                form,
                g if form == "chinchilla" else points,
                x,
                hib,
                bounded,
                huber_delta,
                bootstrap,
                seed,
                label,
                notes,
            )
            s["fits"].append(entry)
            log(f"[{i}/{len(groups)}] {label} {form}: {_summary(entry)}")
        _select(s, target if x == "params" else None, notes)
        if s.get("selection"):
            log(f"[{i}/{len(groups)}] {label}: selected {_selection_text(s)}")
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
        "target": target,
        "lr_search": search,
        "references": _records(refs, ["rung", "params", "task", "mode", "metric", "dataset", "value", "se"]),
    }
    if search is not None:
        notes += [f"LR search: {w}" for w in search.get("warnings", [])]
    if target is not None and x != "params":
        notes.append("--predict forecasts sizes; with x = train_flops no forecast was registered")
    elif target is not None:
        measured = (
            target["rung"] in rung_sizes
            if target["rung"]
            else any(abs(n / target["N"] - 1) < forecasts.SAME_RUNG for n in rung_sizes.values())
        )
        if measured:
            notes.append(
                f"{target['size']} already has results: a forecast of it is not a forecast, "
                "so none was registered"
            )
        else:
            reg = forecasts.register(forecasts.registration(result, target), out, store)
            result["registration"] = {k: str(v) if isinstance(v, Path) else v for k, v in reg.items()}
    result["forecasts"] = forecasts.score(store, result)
    _headline_notes(result)
    result["reference_findings"] = references.findings(_headline(result), refs, x)
    files = {
        "results.parquet": out / "results.parquet",
        "fits.json": out / "fits.json",
        "report.md": out / "report.md",
        "report.html": out / "report.html",
    }
    full_table.to_parquet(files["results.parquet"], index=False)
    files["fits.json"].write_text(json.dumps(result, indent=1, default=_json_default))
    figs = figures.write_all(result, table, out)
    files.update({p.name: p for p in figs})
    if result.get("registration"):
        files["predictions.json"] = out / "predictions.json"
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


def _fit_one(form, pts: pd.DataFrame, x, hib, bounded, delta, bootstrap, seed, label, notes) -> dict:
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
        q, target = fitted_quantity(form, y, hib, bounded)
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
            f"{label} {form}: {target} is not positive (or {entry['x']} is missing) for {where}; "
            "left out of this log-space fit"
        )
    keep = ~bad
    # Eval standard errors, where the table has a positive one for every point: weights and interval noise.
    se = pts["se"].to_numpy(float)[keep] if form != "chinchilla" and "se" in pts else None
    if se is not None and not (np.isfinite(se) & (se > 0)).all():
        if np.isfinite(se).any():
            notes.append(f"{label} {form}: some points have no positive standard error; fitted unweighted")
        se = None
    try:
        f = fit(
            form,
            N[keep],
            y[keep],
            None if D is None else D[keep],
            higher_is_better=hib,
            bounded=bounded,
            se=se,
            huber_delta=delta,
            bootstrap=bootstrap,
            seed=seed,
        )
    except FitError as e:
        rungs = list(dict.fromkeys(pts.loc[keep].sort_values("params")["rung"]))
        return entry | {"status": "not fitted", "reason": f"{e} (usable rungs: {', '.join(rungs) or 'none'})"}
    entry |= {"status": "fitted", "fit": f.to_dict()}
    if form != "chinchilla":
        entry["backtest"] = backtest(
            form,
            N[keep],
            y[keep],
            higher_is_better=hib,
            bounded=bounded,
            se=se,
            huber_delta=delta,
            bootstrap=min(bootstrap, BACKTEST_BOOTSTRAP),
            seed=seed,
        )
    return entry


def _select(s: dict, target: dict | None, notes: list[str]) -> None:
    """Pick the series' form by backtest; forecast the target with it; flag forms that
    disagree there by more than their intervals; judge the trend."""
    laws = [e for e in s["fits"] if e["form"] in SIZE_LAWS and e["status"] == "fitted"]
    if not laws:
        return
    errors = {e["form"]: e["backtest"]["error"] for e in laws}
    form, why = select_form(errors)
    chosen = next(e for e in laws if e["form"] == form)
    s["selection"] = {
        "form": form,
        "why": why,
        "errors": errors,
        "coverage": {e["form"]: e["backtest"]["coverage"] for e in laws},
    }
    s["trend"] = trend(chosen["fit"], s["higher_is_better"])
    if target is None:
        return
    at = {e["form"]: [float(a[0]) for a in predict(e["fit"], target["N"])] for e in laws}
    v, lo, hi = at[form]
    s["forecast"] = {
        "form": form,
        "N": target["N"],
        "size": target["size"],
        "rung": target["rung"],
        "value": v,
        "lo": lo,
        "hi": hi,
        "backtest_error": errors[form],
    }
    s["at_target"] = at
    apart = [(a, b) for a in at for b in at if a < b and (at[a][2] < at[b][1] or at[b][2] < at[a][1])]
    if apart:
        text = " vs ".join(f"{k} {_fmt(p[0])} [{_fmt(p[1])}, {_fmt(p[2])}]" for k, p in at.items())
        s["disagreement"] = f"forms disagree at {target['size']} by more than their 95% intervals: {text}"
        notes.append(f"{s['label']}: {s['disagreement']}")


def trend(f: dict, hib: bool) -> dict:
    """The fitted exponent and whether the trend is resolved: it points the way the metric
    improves and its 95% interval excludes 0. In the fitted quantity, improving means
    falling, except for a power law on a higher-is-better value."""
    b = f["params"]["b"]
    lo, hi = f["ci"].get("b", [math.nan, math.nan])
    rising = f["form"] == "powerlaw" and f["target"] == "value" and hib
    if f["form"] == "saturating":  # q = c + a N^-b: b > 0 is falling
        improving, excludes = b > 0, lo > 1e-6
    else:  # powerlaw q = a N^b: falling when b < 0
        improving = b > 0 if rising else b < 0
        excludes = lo > 0 if rising else hi < 0
    known = bool(np.isfinite([lo, hi]).all())  # no bootstrap, no interval: cannot say
    return {
        "exponent": b,
        "ci": [lo, hi],
        "improving": bool(improving),
        "resolved": bool(improving and excludes) if known else None,
    }


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
    return (
        f"{e['rel_error']:+.2%} at {format_size(e['held_out_N'])} "
        f"(pred {_fmt(e['predicted'])}, actual {_fmt(e['actual'])})"
    )


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


def _final_table(table: pd.DataFrame, series: list[dict] | None = None) -> pd.DataFrame:
    """Final-checkpoint values (± their standard error, where known): one row per series, one column
    per rung (smallest first), whether its trend is resolved, and the series' trivial baseline beside
    them (it depends on the test data only, not on the rung)."""
    t = table[table["metric"].notna()]
    if t.empty:
        return pd.DataFrame()
    last = t.groupby(["rung", "task", "mode", "metric", "dataset"])["step"].transform("max")
    t = t[(t["step"] == last) | last.isna()]
    base = t[t["metric"].map(is_baseline)]
    t = t[~t["metric"].map(is_baseline)]

    def label(d, metric):
        return [series_label(*k) for k in zip(d["task"], d["mode"], metric, d["dataset"], strict=True)]

    t = t.assign(series=label(t, t["metric"]))
    rungs = t.drop_duplicates("rung").sort_values("params")
    wide = t.pivot_table(index="series", columns="rung", values="value", aggfunc="mean")[list(rungs["rung"])]
    if "se" in t and t["se"].notna().any():
        se = t.pivot_table(index="series", columns="rung", values="se", aggfunc="mean", dropna=False)
        se = se.reindex(index=wide.index, columns=wide.columns)
        wide = wide.astype(object)
        for c in wide.columns:
            wide[c] = [
                _fmt(v) if not np.isfinite(e) else f"{_fmt(v)} ± {_fmt(e, 2)}"
                for v, e in zip(wide[c], se[c].astype(float), strict=True)
            ]
    wide.columns = [f"{r} ({format_size(p)})" for r, p in zip(rungs["rung"], rungs["params"], strict=True)]
    if series is not None:
        wide["trend"] = pd.Series({s["label"]: figures.trend_text(s) for s in series})
    if not base.empty:
        stripped = base["metric"].str.slice(len(BASELINE_PREFIX))
        wide["trivial baseline"] = base.assign(series=label(base, stripped)).groupby("series")["value"].mean()
    return wide.reset_index()


# ------------------------------------------------------------------------ findings


def _interval(v, lo, hi) -> str:
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


def _selection_text(s: dict) -> str:
    sel = s["selection"]
    errs = ", ".join(f"{k} {_pct(v)}" for k, v in sel["errors"].items())
    return f"{sel['form']} ({sel['why']}; backtest error {errs})"


def _headline(result: dict) -> list[dict]:
    """The series the figure shows: each task's headline metric, every mode."""
    keys = set(figures.panel_metrics({(s["task"], s["metric"]) for s in result["series"]}))
    return [s for s in result["series"] if (s["task"], s["metric"]) in keys]


def _finding(s: dict, scored: list[dict]) -> str:
    """One line: trend resolved or not, exponent, forecast with form and backtest error, its score."""
    if not s.get("selection"):
        reasons = "; ".join(e.get("reason", "") for e in s["fits"] if e["status"] != "fitted")
        return f"{s['label']}: no size law fitted ({reasons or 'no size law requested'})"
    t, sel = s["trend"], s["selection"]
    way = "higher is better" if s["higher_is_better"] else "lower is better"
    state = (
        "trend points the WRONG way"
        if not t["improving"]
        else "trend resolved"
        if t["resolved"]
        else "trend unknown (no bootstrap)"
        if t["resolved"] is None
        else "trend NOT resolved"
    )
    line = f"{s['label']}: {state} ({way}); {sel['form']} exponent b = {_interval(t['exponent'], *t['ci'])}"
    f = s.get("forecast")
    if f:
        line += (
            f"; forecast at {f['size']}: {_interval(f['value'], f['lo'], f['hi'])} "
            f"({f['form']}, backtest error {_pct(f['backtest_error'])})"
        )
    else:
        line += f"; selected {sel['form']} (backtest error {_pct(sel['errors'][sel['form']])})"
    for r in (r for r in scored if r["series"] == s["label"] and r["observed"] is not None):
        inside = {True: "inside", False: "OUTSIDE", None: "no interval"}[r.get("inside")]
        line += (
            f"; forecast of {r['size']} ({r['created'][:10]}) scored: "
            f"observed {_fmt(r['observed'])}, {inside}"
        )
    return line


def _headline_notes(result: dict) -> None:
    """Say plainly when a headline fit does not support a forecast."""
    for s in _headline(result):
        if s.get("trend") and s["trend"]["resolved"] is False:
            f = next(e["fit"] for e in s["fits"] if e["form"] == s["selection"]["form"])
            result["notes"].append(
                f"{s['label']}: the {s['selection']['form']} trend is not resolved (exponent interval "
                f"includes 0 or points the wrong way; R²(log) {f['r2_log']:.2f}); its forecasts are weak"
            )


def _forecast_rows(fc: dict) -> list[list[str]]:
    rows = []
    for r in fc["rows"]:
        inside = (
            {True: "yes", False: "NO", None: "–"}[r.get("inside")] if r["observed"] is not None else "pending"
        )
        rows.append(
            [
                f"{r['created'][:10]} {r['sha256'][:12]}",
                r["series"],
                r["form"],
                r["size"],
                _interval(r["value"], r["lo"], r["hi"]),
                _fmt(r["observed"]),
                f"{r['rel_error']:+.1%}" if r.get("rel_error") is not None else "–",
                inside,
            ]
        )
    return rows


FORECAST_HEADER = [
    "registered (date, sha256)",
    "series",
    "form",
    "target",
    "forecast [95% interval]",
    "observed",
    "error",
    "inside",
]


def coverage_text(fc: dict) -> str:
    if not fc["rows"]:
        return "No registered forecasts yet: `sweep report --predict SIZE` registers one."
    if not fc["scored"]:
        return f"{fc['pending']} registered forecast(s), none scored yet (their rungs have no results)."
    return (
        f"Coverage: {fc['inside']}/{fc['scored']} ({fc['coverage']:.0%}) scored forecasts landed inside "
        f"their 95% interval; {fc['pending']} pending."
    )


def _selection_rows(result: dict) -> list[list[str]]:
    rows = []
    for s in result["series"]:
        for e in s["fits"]:
            bt = e.get("backtest")
            if bt is None:
                continue
            chosen = s.get("selection", {}).get("form") == e["form"]
            at = s.get("at_target", {}).get(e["form"])
            rows.append(
                [
                    s["label"],
                    e["form"],
                    _pct(bt["error"]),
                    f"{_pct(bt['coverage'])} of {bt['scored_windows']}" if bt["scored_windows"] else "–",
                    str(len(bt["windows"])),
                    _interval(*at) if at else "–",
                    "selected" if chosen else "",
                ]
            )
    return rows


SELECTION_HEADER = [
    "series",
    "form",
    "backtest error (mean |rel|)",
    "interval coverage",
    "windows",
    "at target",
    "",
]


# ------------------------------------------------------------------------ render


def _sections(result: dict, table: pd.DataFrame, figs: list[Path]) -> list[tuple]:
    """The report as a list of blocks, rendered to Markdown and HTML alike: figure and
    findings first, then forecasts, notes, model selection and full tables per task."""
    pngs = [p for p in figs if p.suffix == ".png"]
    lead = [p for p in pngs if p.stem == "scaling"]
    fc = result["forecasts"]
    target = result.get("target")
    out: list[tuple] = [
        (
            "p",
            f"x = {result['x']}; Huber δ = {result['huber_delta']:g}, summed; "
            f"{result['bootstrap']} bootstrap resamples (seed {result['seed']}); "
            f"{result['checkpoint']} checkpoint per rung; intervals are 95% prediction intervals.",
        ),
        *[("img", p) for p in lead],
        ("h2", "Findings"),
        ("ul", [_finding(s, fc["rows"]) for s in _headline(result)] or ["no series"]),
    ]
    refs = pd.DataFrame(result.get("references") or {})
    if not refs.empty:
        out += [
            ("h2", "Reference models"),
            ("ul", result.get("reference_findings") or ["no reference on a headline series"]),
            ("table", references.COMPARISON_HEADER, references.comparison_rows(_headline(result), refs)),
        ]
    reg = result.get("registration")
    if reg:
        out.append(
            (
                "p",
                f"Forecasts at {target['size']} registered in predictions.json, sha256 {reg['sha256']} "
                f"({reg['created']}{'' if reg['new'] else ', unchanged since'}).",
            )
        )
    if result.get("lr_search"):
        head, *rest = lr_search.lines(result["lr_search"])
        out += [("h2", "Learning-rate search"), ("p", head), ("ul", [r.strip() for r in rest])]
    out += [("h2", "Forecasts vs outcomes"), ("p", coverage_text(fc))]
    if fc["rows"]:
        out.append(("table", FORECAST_HEADER, _forecast_rows(fc)))
    out += [("h2", "Notes"), ("ul", result["notes"] or ["none"])]
    sel = _selection_rows(result)
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
    for task in dict.fromkeys(s["task"] for s in result["series"]):
        rows = _fit_rows({"series": [s for s in result["series"] if s["task"] == task]})
        out += [("h3", task or "(no task)"), ("table", FIT_HEADER, rows)]
    others = [p for p in pngs if p not in lead]
    if others:
        out += [("h2", "Figures"), *[("img", p) for p in others]]
    wide = _final_table(table, result["series"])
    if not wide.empty:
        out += [
            ("h2", "Final-checkpoint results"),
            (
                "table",
                list(map(str, wide.columns)),
                [[_fmt(v) for v in r] for r in wide.itertuples(index=False)],
            ),
        ]
    return out


def _markdown(result: dict, table: pd.DataFrame, figs: list[Path]) -> str:
    lines = [f"# Scaling report: {result['sweep']}", ""]
    for kind, *body in _sections(result, table, figs):
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


def _html(result: dict, table: pd.DataFrame, figs: list[Path]) -> str:
    import base64
    import html

    esc = html.escape
    parts = []
    for kind, *body in _sections(result, table, figs):
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
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
        "th{background:#f4f4f4}img{max-width:100%}"
    )
    title = f"Scaling report: {esc(result['sweep'])}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body><h1>{title}</h1>{''.join(parts)}</body></html>\n"
    )


# ------------------------------------------------------------- MLflow, predictions


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
                    "selected": s.get("selection", {}).get("form") == e["form"],
                }
            )
    return rows
