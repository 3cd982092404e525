"""The typed results of a report, and fits.json: what every stage fills in and every renderer reads.

A `Report` holds one `Series` per (task, mode, metric, dataset); a series holds its measured
points, one `FormFit` per requested form, the `Selection` of a form by backtest, its `Trend`, and
its `Forecast` at the --predict target. `Report.to_json()` writes fits.json (with SCHEMA);
`Report.from_json()` reads it back, including files written before the schema field existed
(schema 1: the same keys, no version).

Later additions belong here as optional fields with a default, so older files still read:
a forecast's extrapolation ratio, form agreement and calibrated coverage on `Forecast`
(issue 24), reference models' values as `Report.references` and what the ladder does against
them as `Report.reference_findings` (issue 25).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from contracts.names import VAL_LOSS_ROW
from contracts.tasks import headline
from reports.fit import Fit
from reports.uncertainty import MISSES_LARGEST

SCHEMA = 2  # 1: fits.json before it carried a version (the same keys); 2: `schema` written


def panel_metrics(pairs: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (task, metric) pairs worth a panel: each task's headline metric where it has one,
    otherwise all of the task's metrics (an unknown task, or a --from table). The held-out
    pretraining loss comes first, then tasks by name."""
    have = set(pairs)
    keep = ((t, m) for t, m in have if m == (headline(t) or m) or (t, headline(t)) not in have)
    return sorted(keep, key=panel_order)


def panel_order(key: tuple[str, str]) -> tuple:
    return (key[0] != VAL_LOSS_ROW[0], *key)


def plain(v):
    """A JSON-ready scalar: numpy scalars to Python, NaN to None (tables' missing values)."""
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


def _without_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _known(cls, d: dict) -> dict:
    """The keys of `d` that are fields of `cls` (a newer file's extra keys are ignored)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class Target:
    """What `--predict` asked for: a size, and the rung of the table it names, if any."""

    size: str
    N: float
    rung: str | None = None

    def to_json(self) -> dict:
        return {"size": self.size, "N": self.N, "rung": self.rung}


@dataclass
class FormFit:
    """One form fitted to one series: the law (`fit`) or why it was not fitted (`reason`)."""

    form: str
    x: str
    status: str = "not fitted"  # "fitted" | "not fitted"
    reason: str | None = None
    fit: Fit | None = None
    backtest: dict | None = None  # reports.fit.backtest's windows, error and coverage (size laws)
    D: str | None = None  # chinchilla: which column was the data seen
    points: dict[str, list] | None = None  # chinchilla: the points it was fitted on, with D
    excluded: dict[str, list] | None = None  # points a log fit could not take

    @property
    def fitted(self) -> bool:
        return self.status == "fitted"

    def to_json(self) -> dict:
        d = {"form": self.form, "x": self.x, "D": self.D, "points": self.points, "excluded": self.excluded}
        d |= {"status": self.status, "reason": self.reason}
        d |= {"fit": self.fit.to_dict() if self.fit else None, "backtest": self.backtest}
        return _without_none(d)

    @classmethod
    def from_json(cls, d: dict) -> FormFit:
        d = _known(cls, d)
        return cls(**d | {"fit": Fit.from_dict(d["fit"]) if d.get("fit") else None})


@dataclass
class Selection:
    """The form a series' backtest selected, why, and every form's backtest error and coverage."""

    form: str
    why: str
    errors: dict[str, float | None]
    coverage: dict[str, float | None]


@dataclass
class Trend:
    """The selected law's exponent, its 95% interval, and whether the trend is resolved."""

    exponent: float
    ci: list[float]
    improving: bool
    resolved: bool | None  # None: no interval (no bootstrap), so nobody can say


@dataclass
class Forecast:
    """The selected form's value and 95% interval at the --predict target."""

    form: str
    N: float
    size: str
    rung: str | None
    value: float
    lo: float
    hi: float
    backtest_error: float | None
    # How far it can be trusted (reports.uncertainty): absent from reports before issue 24.
    extrapolation_ratio: float | None = None  # target size / largest fitted rung
    calibrated_coverage: float | None = None  # the benchmark's coverage at this ratio
    forms_agree: bool | None = None
    trusted_ratio: float | None = None  # the forms' intervals overlap up to this ratio
    # |averaged law − measured| at the largest fitted rung, a share of the rungs' range (or noise)
    largest_rung_miss: float | None = None
    caveat: str | None = None  # the fields above in one phrase, shown beside the forecast

    @property
    def misses_largest_rung(self) -> bool:
        """Its law passes far from the largest fitted rung (reports.uncertainty.MISSES_LARGEST)."""
        return (self.largest_rung_miss or 0.0) >= MISSES_LARGEST

    def to_json(self) -> dict:
        """Its fields; the later, optional ones only where known, so an older file reads back as it was."""
        optional = {f.name for f in fields(self) if f.default is None}
        return {k: v for k, v in vars(self).items() if v is not None or k not in optional}


@dataclass
class ReferencePoint:
    """A reference model's value on one (task, mode, metric, dataset): evaluated beside the
    ladder, never fitted (reports.references). params 0: no parameters (pixels); se None: unknown."""

    name: str
    params: float
    task: str
    mode: str
    metric: str
    dataset: str
    value: float
    se: float | None = None

    @classmethod
    def from_json(cls, d: dict) -> ReferencePoint:
        return cls(**_known(cls, d))


def _reference_points(d: list | dict | None) -> list[ReferencePoint]:
    """fits.json's references: a list of records; a file written while references were columns
    (rung -> [...], params -> [...]) reads too."""
    if not d:
        return []
    if isinstance(d, dict):
        cols = {("name" if k == "rung" else k): v for k, v in d.items()}
        d = [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]
    return [ReferencePoint.from_json(r) for r in d]


@dataclass
class Series:
    """One (task, mode, metric, dataset): its points, fits, selection, trend and forecast."""

    task: str
    mode: str
    metric: str
    dataset: str
    label: str
    higher_is_better: bool
    bounded: bool
    missing_rungs: list[str]
    points: dict[str, list]  # column -> values: rung, params, train_flops, step, value, se
    fits: list[FormFit] = field(default_factory=list)
    selection: Selection | None = None
    trend: Trend | None = None
    forecast: Forecast | None = None
    at_target: dict[str, list[float]] | None = None  # every fitted size law at the target
    disagreement: str | None = None

    def fit_of(self, form: str) -> FormFit | None:
        return next((e for e in self.fits if e.form == form), None)

    @property
    def selected(self) -> FormFit | None:
        return self.fit_of(self.selection.form) if self.selection else None

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["fits"] = [e.to_json() for e in self.fits]
        for name in ("selection", "trend"):
            d[name] = vars(d[name]) if d[name] is not None else None
        d["forecast"] = self.forecast.to_json() if self.forecast else None
        return _without_none(d)

    @classmethod
    def from_json(cls, d: dict) -> Series:
        d = _known(cls, d)
        typed = {"selection": Selection, "trend": Trend, "forecast": Forecast}
        return cls(
            **d
            | {"fits": [FormFit.from_json(e) for e in d["fits"]]}
            | {k: t(**_known(t, d[k])) if d.get(k) else None for k, t in typed.items()}
        )


@dataclass
class ScoredForecast:
    """One registered forecast against this report's results (observed None: its rung has none)."""

    sha256: str
    created: str
    size: str
    N: float
    series: str
    task: str
    mode: str
    metric: str
    form: str
    value: float
    lo: float
    hi: float
    observed: float | None = None
    error: float | None = None
    rel_error: float | None = None
    inside: bool | None = None  # None: not scored, or no interval to judge

    def to_json(self) -> dict:
        d = vars(self).copy()
        if self.observed is None:  # a pending forecast has no error and no verdict
            for k in ("error", "rel_error", "inside"):
                d.pop(k)
        return d


@dataclass
class ForecastScores:
    """Every stored forecast scored, and the running coverage over those that could be judged."""

    rows: list[ScoredForecast] = field(default_factory=list)
    scored: int = 0
    inside: int = 0
    coverage: float | None = None
    pending: int = 0

    def to_json(self) -> dict:
        return vars(self) | {"rows": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, d: dict) -> ForecastScores:
        return cls(**d | {"rows": [ScoredForecast(**_known(ScoredForecast, r)) for r in d["rows"]]})


@dataclass
class Registration:
    """Where this report's forecasts were registered (predictions.json), their hash and date."""

    path: Path
    sha256: str
    created: str
    new: bool  # False: the same forecasts were registered before, and keep their first date

    def to_json(self) -> dict:
        return vars(self) | {"path": str(self.path)}


@dataclass
class Report:
    """Everything a report found; fits.json is this, written by `to_json`."""

    sweep: str
    x: str
    huber_delta: float
    bootstrap: int
    seed: int
    checkpoint: str
    rungs: list[dict[str, Any]] = field(
        default_factory=list
    )  # {"rung", "params"}, smallest first, not failed
    failed_rungs: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    target: Target | None = None
    lr_search: dict | None = None  # reports.lr_search.analyse: the LR grid's optima and law
    registration: Registration | None = None
    forecasts: ForecastScores = field(default_factory=ForecastScores)
    references: list[ReferencePoint] = field(default_factory=list)  # reference models, never fitted
    reference_findings: list[str] = field(default_factory=list)  # the headline series against them
    files: dict[str, Path] = field(default_factory=dict)  # written report files; not in fits.json
    schema: int = SCHEMA

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("files", "schema")}
        d |= {"series": [s.to_json() for s in self.series]}
        d |= {"target": self.target.to_json() if self.target else None}
        d |= {"forecasts": self.forecasts.to_json()}
        d |= {"references": [vars(r) for r in self.references]}
        for name in ("references", "reference_findings"):  # a sweep without references: as before
            if not d[name]:
                del d[name]
        if self.registration is None:
            del d["registration"]
        else:
            d["registration"] = self.registration.to_json()
        return {"schema": SCHEMA} | d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, default=_json_default)

    @classmethod
    def from_json(cls, d: dict) -> Report:
        d = _known(cls, d) | {"schema": d.get("schema", 1)}
        if d["schema"] > SCHEMA:
            raise ValueError(f"fits.json schema {d['schema']} is newer than this sweep4d reads ({SCHEMA})")
        reg = d.get("registration")
        return cls(
            **d
            | {"series": [Series.from_json(s) for s in d["series"]]}
            | {"target": Target(**d["target"]) if d.get("target") else None}
            | {"registration": Registration(**reg | {"path": Path(reg["path"])}) if reg else None}
            | {"references": _reference_points(d.get("references"))}
            | {
                "forecasts": ForecastScores.from_json(d["forecasts"])
                if d.get("forecasts")
                else ForecastScores()
            }
        )

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """A fits.json, of this schema or an older one."""
        return cls.from_json(json.loads(Path(path).read_text()))

    def headline(self) -> list[Series]:
        """Each task's headline metric, every mode: the series the figure and findings show."""
        keys = set(panel_metrics({(s.task, s.metric) for s in self.series}))
        return [s for s in self.series if (s.task, s.metric) in keys]
