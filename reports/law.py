"""A fitted scaling law and its predictions: what reports.fit and reports.chinchilla produce and
every reader of fits.json uses (`Fit`, `predict`), with the quantity a law is fitted on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from reports.forms import _FORMS

FORMS = ("powerlaw", "saturating", "chinchilla")
SIZE_LAWS = ("powerlaw", "saturating")
MIN_RUNGS = 3
LEVEL = 0.95


class FitError(ValueError):
    """The data cannot be fitted with this form (too few rungs, non-positive values, ...)."""


# ------------------------------------------------------------------------- results


@dataclass
class Fit:
    """One fitted law. `params` are the natural ones (powerlaw a, b; saturating a, b, c;
    chinchilla E, A, B, alpha, beta); `theta`/`boot`/`noise` are the internal ones, kept so
    that predictions with intervals can be made later from fits.json alone."""

    form: str
    params: dict[str, float]
    ci: dict[str, list[float]]
    loss: float
    huber_delta: float
    n_points: int
    n_rungs: int
    target: str  # "value" or "1 - value": what was fitted in log space
    x0: float  # centre of log N for size laws
    theta: list[float]
    r2_log: float
    residuals: list[float]  # log(pred) − log(observed), in input order
    boot: list[list[float]] = field(default_factory=list)
    extrapolation: dict | None = None
    notes: list[str] = field(default_factory=list)
    bounded: bool = False  # predictions and intervals clipped to [0, 1]
    noise: list[float] = field(default_factory=list)  # per resample: log-space noise of a new measurement
    sigma: float | None = None  # the log-space noise scale the intervals used
    sigma_from: str = ""  # "se" (eval standard errors) or "residuals"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Fit:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _natural(form: str, theta: np.ndarray, x0: float) -> dict[str, np.ndarray]:
    """Internal theta (..., k) -> natural parameters."""
    t = np.asarray(theta, float)
    if form == "powerlaw":
        return {"a": np.exp(t[..., 0] - t[..., 1] * x0), "b": t[..., 1]}
    if form == "saturating":
        return {"a": np.exp(t[..., 0] + t[..., 1] * x0), "b": t[..., 1], "c": np.exp(t[..., 2])}
    return {
        "E": np.exp(t[..., 2]),
        "A": np.exp(t[..., 0]),
        "B": np.exp(t[..., 1]),
        "alpha": t[..., 3],
        "beta": t[..., 4],
    }


def fitted_quantity(form: str, y, higher_is_better: bool, bounded: bool = False) -> tuple[np.ndarray, str]:
    """The quantity fitted in log space (must be > 0) and its name.

    A bounded metric (a fraction in [0, 1]) is fitted on its error, 1 − value, when higher
    is better, under every size law; otherwise the value itself. Chinchilla fits losses.
    """
    y = np.asarray(y, float)
    if form == "chinchilla" or not higher_is_better:
        if bounded and form != "chinchilla" and not np.all((y >= 0) & (y <= 1)):
            raise FitError(
                f"{form}: this bounded metric has values outside [0, 1] (give bounded metrics as fractions)"
            )
        return y, "value"
    if form == "powerlaw" and not bounded:
        return y, "value"
    if np.all((y >= 0) & (y <= 1)):
        return 1.0 - y, "1 - value"
    raise FitError(
        f"{form} fits a quantity that decreases with scale; this higher-is-better metric has values "
        "outside [0, 1], so 1 − value is not an error rate (give bounded metrics as fractions)"
    )


def _cols(form: str, N, D, x0):
    lN = np.log(np.asarray(N, float))
    if form == "chinchilla":
        return (lN, np.log(np.asarray(D, float)))
    return (lN - x0,)


def _to_metric(f: Fit, q):
    """The fitted quantity back in the metric's units, inside [0, 1] for a bounded metric."""
    v = 1.0 - q if f.target == "1 - value" else q
    return np.clip(v, 0.0, 1.0) if f.bounded else v


def _check(q, N, D=None) -> np.ndarray:
    bad = ~np.isfinite(q) | (q <= 0) | ~(N > 0) | (False if D is None else ~(D > 0))
    return bad


def predict(f: Fit | dict, N, D=None, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, lo, hi) at sizes N (and D for chinchilla), in the metric's own units.

    The interval comes from the bootstrap fits (NaN when there were none); for the size laws
    it includes the noise of a new measurement, so it is where the rung's value should land.
    """
    f = Fit.from_dict(f) if isinstance(f, dict) else f
    spec = _FORMS[f.form]
    N = np.atleast_1d(np.asarray(N, float))
    if f.form == "chinchilla" and D is None:
        raise FitError("a chinchilla prediction needs D (clips or tokens seen) as well as N")
    cols = _cols(f.form, N, None if D is None else np.broadcast_to(np.asarray(D, float), N.shape), f.x0)
    value = _to_metric(f, np.exp(spec.model(np.asarray(f.theta), cols)[0]))
    if not f.boot:
        nan = np.full_like(value, np.nan)
        return value, nan, nan
    logq = spec.model(np.asarray(f.boot), cols)[0]  # (B, n)
    if f.noise:
        logq = logq + np.asarray(f.noise)[:, None]
    samples = _to_metric(f, np.exp(logq))
    lo, hi = np.percentile(samples, [(1 - level) / 2 * 100, (1 + level) / 2 * 100], axis=0)
    return value, np.minimum(lo, hi), np.maximum(lo, hi)
