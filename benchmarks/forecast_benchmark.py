"""Forecast benchmark: how honest are the 95% intervals ten sizes out, on public ladders?

    python benchmarks/forecast_benchmark.py [--ladders opt,pythia] [--write-calibration]

For each ladder in benchmarks/ladders/ and each series (task, mode, metric), fit on every rung
up to 1/R of the largest (R = 5, 10, 30 where at least 3 rungs remain), forecast the largest,
and score: coverage of the 95% interval, median and worst |relative error|, median relative
width (hi − lo) / |actual|, and `optimistic`: error-like series whose real value landed above
the interval (the forecast promised a lower error than the rung reached). BEFORE is the
report's method until issue 24 (the backtest's best form, its bootstrap interval); AFTER is
reports.uncertainty.forecast. `--write-calibration` stores AFTER's coverage by extrapolation
ratio, over every ladder, in reports/forecast_calibration.json, which reports read.
`--per-form` prints, instead, the median error of each credible form's own point forecast, of
their default average and of the best single form per series chosen in hindsight: how close any
choice among these forms could come.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))  # run from anywhere without installing

from reports import uncertainty  # noqa: E402
from reports.collect import read_table  # noqa: E402
from reports.fit import SIZE_LAWS, FitError, backtest, fit, predict, select_form  # noqa: E402
from reports.uncertainty import CALIBRATION_FILE, RATIO_BINS, forecast  # noqa: E402

LADDERS = Path(__file__).parent / "ladders"
# Each held out when declared, before any method was run on it (docs/forecasting.md); every one but
# the newest has since been seen by a method, and changes were tuned on it.
HELD_OUT = (
    "opt", "cerebras-gpt", "qwen2.5", "qwen1.5", "qwen2", "bloom", "openlm-rpj", "openlm-c4", "openlm-rw"
)  # fmt: skip
NEW_HELD_OUT = ("openlm-c4", "openlm-rw")  # declared in session 15, before any method ran on them
RS = (5, 10, 30)
BOOTSTRAP = 200  # `sweep report` defaults to 1000; 200 keeps the benchmark minutes long
BACKTEST_BOOTSTRAP = 100  # the report uses 200 per backtest window
EVERY_FORM = tuple(dict.fromkeys((*uncertainty.FORMS_AVERAGED, uncertainty.LOGLINEAR, uncertainty.EMERGENCE)))


@dataclass
class Outcome:
    ladder: str
    series: str
    R: int
    ratio: float  # target size / largest fitted size
    actual: float
    value: float
    lo: float
    hi: float
    error_like: bool
    best_observed: float
    forms: dict[str, float] = field(default_factory=dict)  # each form's own point forecast (--per-form)
    largest_rung_miss: float | None = None  # how far AFTER's law passes from its largest fitted rung

    @property
    def rel_error(self) -> float:
        return self.error_of(self.value)

    def error_of(self, value: float) -> float:
        return abs(value - self.actual) / abs(self.actual)

    @property
    def inside(self) -> bool:
        return bool(self.lo <= self.actual <= self.hi)

    @property
    def optimistic(self) -> bool:
        """An error-like series whose real value is worse (higher) than the interval allowed."""
        return self.error_like and self.actual > self.hi


def before(N, y, se, hib, bounded, target, chance=None) -> tuple[float, float, float, dict, float | None]:
    """The report's method before issue 24: each size law with its bootstrap, selected by backtest."""
    fits, errors = {}, {}
    for form in SIZE_LAWS:
        try:
            fits[form] = fit(form, N, y, higher_is_better=hib, bounded=bounded, se=se, bootstrap=BOOTSTRAP)
        except FitError:
            continue
        errors[form] = backtest(
            form, N, y, higher_is_better=hib, bounded=bounded, se=se, bootstrap=BACKTEST_BOOTSTRAP
        )["error"]
    form, _ = select_form(errors)
    v, lo, hi = predict(fits[form], target)
    return float(v[0]), float(lo[0]), float(hi[0]), {}, None


def after(N, y, se, hib, bounded, target, chance=None) -> tuple[float, float, float, dict, float | None]:
    f = forecast(N, y, target, higher_is_better=hib, bounded=bounded, se=se, chance=chance)
    return f.value, f.lo, f.hi, {}, f.largest_rung_miss


def per_form(N, y, se, hib, bounded, target, chance=None) -> tuple[float, float, float, dict, float | None]:
    """The default forecast, and every credible form's own point forecast beside it."""
    v, lo, hi, _, miss = after(N, y, se, hib, bounded, target, chance)
    f = forecast(N, y, target, higher_is_better=hib, bounded=bounded, se=se, chance=chance, forms=EVERY_FORM)
    return v, lo, hi, {x.form: x.value for x in f.forms}, miss


def run(ladder: str, method, rungs: int | None = None) -> list[Outcome]:
    """Each series' forecasts of the largest rung; `rungs`: fit only that many of the largest
    rungs at or below 1/R (a short ladder, as a user with few sizes has)."""
    df = read_table(LADDERS / f"{ladder}.csv")
    out = []
    for (task, mode, metric), s in df.groupby(["task", "mode", "metric"]):
        s = s.sort_values("params")
        N, y = s["params"].to_numpy(float), s["value"].to_numpy(float)
        se = s["se"].to_numpy(float) if "se" in s and s["se"].notna().all() else None
        hib, bounded = bool(s["higher_is_better"].iloc[0]), bool(s["bounded"].iloc[0])
        chance = float(s["chance"].iloc[0]) if "chance" in s and s["chance"].notna().all() else None
        target = N.max()
        if not np.all(y[N == target]):  # a relative error needs a target that measured more than 0
            continue
        for R in RS:
            keep = N <= target / R
            if rungs is not None:
                keep &= N >= np.unique(N[keep])[-rungs:].min(initial=np.inf)
            if np.unique(N[keep]).size < 3:
                continue
            se_k = None if se is None else se[keep]
            v, lo, hi, forms, miss = method(N[keep], y[keep], se_k, hib, bounded, target, chance)
            best = y[keep].max() if hib else y[keep].min()
            out.append(
                Outcome(
                    ladder,
                    f"{task}/{metric} ({mode})",
                    R,
                    target / N[keep].max(),
                    float(y[N == target].mean()),
                    v,
                    lo,
                    hi,
                    not hib,
                    float(best),
                    forms,
                    miss,
                )  # fmt: skip
            )
    return out


def summary(rows: list[Outcome]) -> dict:
    err = np.array([r.rel_error for r in rows])
    return {
        "n": len(rows),
        "coverage": float(np.mean([r.inside for r in rows])),
        "median": float(np.median(err)),
        "worst": float(err.max()),
        "width": float(np.median([(r.hi - r.lo) / abs(r.actual) for r in rows])),
        "optimistic": sum(r.optimistic for r in rows),
    }


def _groups(ladders: list[str]) -> list[tuple[str, list[str]]]:
    return [
        ("**tuning**", [x for x in ladders if x not in HELD_OUT]),
        ("**held out, seen**", [x for x in ladders if x in HELD_OUT and x not in NEW_HELD_OUT]),
        ("**held out, new**", [x for x in ladders if x in NEW_HELD_OUT]),
    ]


def table(results: dict[str, list[Outcome]], ladders: list[str]) -> str:
    lines = [
        "| ladder | R | series | coverage before → after | median error before → after "
        "| worst error before → after | width before → after | error-like above interval before → after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, members in [(lad, [lad]) for lad in ladders] + _groups(ladders):
        for R in RS:
            b = [r for r in results["before"] if r.ladder in members and r.R == R]
            a = [r for r in results["after"] if r.ladder in members and r.R == R]
            if not a:
                continue
            sb, sa = summary(b), summary(a)
            lines.append(
                f"| {name} | {R} | {sa['n']} | {sb['coverage']:.0%} → {sa['coverage']:.0%} "
                f"| {sb['median']:.1%} → {sa['median']:.1%} | {sb['worst']:.1%} → {sa['worst']:.1%} "
                f"| {sb['width']:.1%} → {sa['width']:.1%} | {sb['optimistic']} → {sa['optimistic']} |"
            )
    return "\n".join(lines)


MISS_BINS = ((0.0, 0.1), (0.1, uncertainty.MISSES_LARGEST), (uncertainty.MISSES_LARGEST, math.inf))


def miss_table(rows: list[Outcome], ladders: list[str]) -> str:
    """AFTER's coverage and median error by how far its law passes from the largest fitted rung
    (`Forecast.largest_rung_miss`; the report flags the last bin)."""
    lines = [
        "| ladders | R | law misses its largest rung by | series | coverage | median error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, members in [*_groups(ladders), ("**all**", ladders)]:
        for R in RS:
            for lo, hi in MISS_BINS:
                sel = [r for r in rows if r.ladder in members and r.R == R and lo <= r.largest_rung_miss < hi]
                if sel:
                    s = summary(sel)
                    bin_ = f"{lo:.0%} or more" if math.isinf(hi) else f"{lo:.0%}-{hi:.0%}"
                    lines.append(
                        f"| {name} | {R} | {bin_} | {s['n']} | {s['coverage']:.0%} | {s['median']:.1%} |"
                    )
    return "\n".join(lines)


def form_table(rows: list[Outcome], ladders: list[str]) -> str:
    """Median |relative error| of each form's own forecast (unbounded), of the default forecast,
    and of the best single form per series in hindsight (a bound on choosing one of these forms)."""
    head = [*EVERY_FORM, "default forecast", "best form in hindsight"]
    lines = ["| ladders | R | series | " + " | ".join(head) + " |", "|" + " --- |" * (len(head) + 3)]
    for name, members in _groups(ladders):
        for R in RS:
            sel = [r for r in rows if r.ladder in members and r.R == R]
            if not sel:
                continue
            cells = []
            for form in EVERY_FORM:
                e = [r.error_of(r.forms[form]) for r in sel if form in r.forms]
                cells.append(f"{np.median(e):.1%} ({len(e)})" if e else "–")
            cells.append(f"{np.median([r.rel_error for r in sel]):.1%}")
            cells.append(f"{np.median([min(map(r.error_of, r.forms.values())) for r in sel]):.1%}")
            lines.append(f"| {name} | {R} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration(rows: list[Outcome]) -> dict:
    """AFTER's coverage per bin of extrapolation ratio, over every ladder."""
    bins = []
    for lo, hi in zip(RATIO_BINS[:-1], RATIO_BINS[1:], strict=True):
        inside = [r.inside for r in rows if lo <= r.ratio < hi]
        if inside:
            bins.append(
                {"ratio_from": lo, "ratio_to": hi, "series": len(inside), "coverage": float(np.mean(inside))}
            )
    return {"level": 0.95, "source": "benchmarks/forecast_benchmark.py (every ladder)", "bins": bins}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ladders", default=",".join(sorted(p.stem for p in LADDERS.glob("*.csv"))))
    ap.add_argument("--methods", default="before,after")
    ap.add_argument("--write-calibration", action="store_true")
    ap.add_argument("--detail", action="store_true", help="print every series' forecast")
    ap.add_argument("--per-form", action="store_true", help="each form's median error, not before/after")
    ap.add_argument("--rungs", type=int, help="fit only this many of the largest rungs below each cutoff")
    ap.add_argument("--cache", type=Path, help="reuse (or store) BEFORE's outcomes in this JSON file")
    ap.add_argument("--kappa", type=float, help="override the extrapolation floor (tuning only)")
    ap.add_argument("--forms", help="override the averaged forms, comma-separated (tuning only)")
    ap.add_argument(
        "--set", action="append", default=[], help="NAME=VALUE of reports.uncertainty (tuning only)"
    )
    a = ap.parse_args()
    if a.rungs is not None and a.rungs < 3:
        ap.error("--rungs must be at least 3: fewer rungs leave no fit")
    if a.rungs is not None and a.cache:
        ap.error("--cache keeps full-ladder outcomes: leave it out with --rungs")
    tuning = a.rungs is not None or a.kappa is not None or a.forms or a.set
    if a.write_calibration and (tuning or a.per_form):
        ap.error("--write-calibration stores the default method's coverage on full ladders only")
    if a.kappa is not None:
        uncertainty.KAPPA_FLOOR = a.kappa
    if a.forms:
        uncertainty.FORMS_AVERAGED = tuple(a.forms.split(","))
    for kv in a.set:
        name, value = kv.split("=")
        setattr(uncertainty, name, type(getattr(uncertainty, name))(ast.literal_eval(value)))
    ladders = a.ladders.split(",")
    if a.per_form:
        rows = [r for ladder in ladders for r in run(ladder, per_form, a.rungs)]
        print(form_table(rows, ladders))
        return
    results: dict[str, list[Outcome]] = {}
    cached = [Outcome(**d) for d in json.loads(a.cache.read_text())] if a.cache and a.cache.is_file() else []
    for name in a.methods.split(","):
        method = {"before": before, "after": after}[name]
        results[name] = [r for r in cached if r.ladder in ladders] if name == "before" else []
        done = {r.ladder for r in cached} if name == "before" else set()
        for ladder in (x for x in ladders if x not in done):
            t = time.perf_counter()
            results[name] += run(ladder, method, a.rungs)
            print(f"{name} {ladder}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    if "before" not in results or "after" not in results:
        only = results.get("after") or results["before"]
        results = {"before": only, "after": only}
    if a.cache and "before" in a.methods.split(","):  # what was cached, and the ladders added
        keep = [r for r in cached if r.ladder not in ladders]
        a.cache.write_text(json.dumps([asdict(r) for r in keep + results["before"]]))
    if a.detail:
        for r in results.get("after", []):
            print(
                f"{r.ladder:15} R={r.R:<3} {r.series:40} ratio {r.ratio:6.1f} actual {r.actual:8.4g} "
                f"{r.value:8.4g} [{r.lo:8.4g}, {r.hi:8.4g}] err {r.rel_error:6.1%} {r.inside}"
            )
    print(table(results, ladders))
    if "after" in a.methods.split(","):
        print(miss_table(results["after"], ladders))
    if a.write_calibration:
        CALIBRATION_FILE.write_text(json.dumps(calibration(results["after"]), indent=1) + "\n")
        print(f"wrote {CALIBRATION_FILE}")


if __name__ == "__main__":
    main()
