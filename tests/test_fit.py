"""The scaling-law fitter against real data (the Chinchilla replication) and known laws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.fit import FitError, backtest, chinchilla_grid, fit, predict
from reports.lbfgs import minimize_batch

DATA = Path(__file__).parent / "data" / "chinchilla_svg_extracted_data.csv"
# Epoch AI's replication, grid fit on the same 240 points (tests/data/README.md).
REPLICATION = {"E": 1.8172, "A": 477.8, "B": 2143.9, "alpha": 0.3473, "beta": 0.3672}
REPLICATION_LOSS = 0.0010183


def chinchilla_points() -> pd.DataFrame:
    """The 240 points the replication fits: drop the 5 highest losses; D = C / (6 N)."""
    df = pd.read_csv(DATA)
    df = df[df["loss"] < df["loss"].nlargest(5).min()]
    return pd.DataFrame(
        {"N": df["Model Size"], "D": df["Training FLOP"] / (6 * df["Model Size"]), "loss": df["loss"]}
    )


def check_replication(params: dict, loss: float) -> None:
    """E, α, β within 1%, A, B within 10%, summed Huber loss within 1% (used by test_report too)."""
    for k, tol in (("E", 0.01), ("alpha", 0.01), ("beta", 0.01), ("A", 0.10), ("B", 0.10)):
        assert params[k] == pytest.approx(REPLICATION[k], rel=tol), k
    assert loss == pytest.approx(REPLICATION_LOSS, rel=0.01)


@pytest.fixture(scope="module")
def chinchilla():
    pts = chinchilla_points()
    return pts, fit("chinchilla", pts["N"], pts["loss"], pts["D"], bootstrap=0, extrapolate=False)


def test_chinchilla_grid_is_the_replications():
    g = chinchilla_grid()
    assert g.shape == (3125, 5)
    assert sorted(set(g[:, 3])) == [0, 0.5, 1, 1.5, 2] and sorted(set(g[:, 2])) == [-1, -0.5, 0, 0.5, 1]


def test_chinchilla_recovers_replication(chinchilla):
    pts, f = chinchilla
    assert len(pts) == 240
    check_replication(f.params, f.loss)
    # The published (early-stopped) Chinchilla values score ~4x worse on these points.
    assert f.loss < 0.002


def test_chinchilla_predict_needs_and_uses_D(chinchilla):
    pts, f = chinchilla
    with pytest.raises(FitError, match="needs D"):
        predict(f, 1e9)
    v, lo, hi = predict(f, [1e9, 1e9], [1e10, 1e12])
    assert v[0] > v[1] > f.params["E"]  # more data, lower loss, never below the floor
    assert np.isnan(lo).all()  # no bootstrap was asked for


def test_powerlaw_exact_on_noiseless_data():
    N = np.geomspace(2e7, 2e10, 6)
    f = fit("powerlaw", N, 3.0 * N**-0.2, bootstrap=200)
    assert f.params["a"] == pytest.approx(3.0, rel=1e-6)
    assert f.params["b"] == pytest.approx(-0.2, rel=1e-6)
    assert f.r2_log == pytest.approx(1.0) and max(map(abs, f.residuals)) < 1e-8
    # Leave-largest-out: fitted on 5 sizes, predicts the 6th exactly.
    e = f.extrapolation
    assert e["held_out_N"] == pytest.approx(2e10)
    assert abs(e["rel_error"]) < 1e-6 and e["actual"] == pytest.approx(3.0 * 2e10**-0.2)
    v, lo, hi = predict(f, 22e9)
    assert lo[0] <= v[0] <= hi[0] and v[0] == pytest.approx(3.0 * 22e9**-0.2, rel=1e-6)


def test_leave_largest_out_sees_a_wrong_law():
    # Saturating data: a power law extrapolates worse than the saturating form itself.
    N = np.geomspace(2e7, 2e10, 7)
    err = 0.15 + 2.0 * N**-0.25
    pl = fit("powerlaw", N, err, bootstrap=0)
    sat = fit("saturating", N, err, bootstrap=0)
    assert abs(sat.extrapolation["rel_error"]) < 1e-4
    assert abs(pl.extrapolation["rel_error"]) > 10 * abs(sat.extrapolation["rel_error"])
    assert sat.params["c"] == pytest.approx(0.15, rel=1e-3) and sat.params["b"] == pytest.approx(
        0.25, rel=1e-3
    )


def test_an_accuracy_of_zero_at_the_largest_rung_is_said_not_divided_by():
    # Generated-answer tasks score 0 at small rungs; the leave-largest-out check has no relative
    # error to give then, and must say so rather than fail the whole fit.
    N = np.geomspace(1e7, 1e9, 5)
    for form in ("powerlaw", "saturating"):
        f = fit(form, N, np.array([0.0, 0.02, 0.0, 0.03, 0.0]), higher_is_better=True, bounded=True)
        assert "largest rung measured 0" in f.extrapolation["error"]
        assert "rel_error" not in f.extrapolation
        # the backtest scores only the windows whose held-out rung measured more than 0
        bt = backtest(form, N, np.array([0.01, 0.02, 0.03, 0.0, 0.05]), higher_is_better=True, bounded=True)
        assert [w["rel_error"] is None for w in bt["windows"]] == [True, False]
        assert bt["error"] == pytest.approx(abs(bt["windows"][1]["rel_error"]))


def test_saturating_fits_error_of_bounded_scores():
    N = np.geomspace(2e7, 2e10, 6)
    acc = 1 - (0.2 + 3.0 * N**-0.3)
    f = fit("saturating", N, acc, higher_is_better=True, bootstrap=0)
    assert f.target == "1 - value"
    assert f.params["b"] == pytest.approx(0.3, rel=1e-3)
    assert predict(f, 2e10)[0][0] == pytest.approx(acc[-1], rel=1e-4)
    with pytest.raises(FitError, match="outside \\[0, 1\\]"):
        fit("saturating", N, acc * 100, higher_is_better=True, bootstrap=0)


def test_too_few_rungs_and_non_positive_values_are_errors():
    with pytest.raises(FitError, match="at least 3 rungs, got 2"):
        fit("powerlaw", [1e8, 1e8, 1e9], [0.5, 0.51, 0.4], bootstrap=0)
    with pytest.raises(FitError, match="non-positive"):
        fit("powerlaw", [1e7, 1e8, 1e9], [0.5, 0.0, 0.4], bootstrap=0)
    with pytest.raises(FitError, match="unknown fit form"):
        fit("exponential", [1e7, 1e8, 1e9], [0.5, 0.4, 0.3])


def test_saturating_bootstrap_is_calibrated():
    """8 sizes x 3 repeats, 2% multiplicative noise: the 95% interval of the exponent
    holds the true one in at least 80 of 100 seeded trials."""
    sizes = np.geomspace(2e7, 2.2e10, 8)
    N = np.repeat(sizes, 3)
    c, b = 0.1, 0.25
    a = 0.5 * sizes[0] ** b
    hits, widths = 0, []
    for trial in range(100):
        rng = np.random.default_rng(trial)
        err = (c + a * N**-b) * np.exp(0.02 * rng.standard_normal(N.size))
        f = fit(
            "saturating", N, 1 - err, higher_is_better=True, bootstrap=1000, seed=trial, extrapolate=False
        )
        lo, hi = f.ci["b"]
        hits += lo <= b <= hi
        widths.append(hi - lo)
    assert hits >= 80, hits
    assert np.median(widths) < 0.5  # an interval that says nothing would also "cover"


def test_batched_lbfgs_matches_per_problem_minimum():
    # Rosenbrock at different scales, one problem per row, with a bound active in one.
    scale = np.array([1.0, 10.0, 100.0])[:, None]

    def fun(x, rows):
        s = scale[rows]
        u, v = x[:, :1], x[:, 1:]
        f = (1 - u) ** 2 + s * (v - u**2) ** 2
        g = np.hstack([-2 * (1 - u) - 4 * s * u * (v - u**2), 2 * s * (v - u**2)])
        return f[:, 0], g

    x, f = minimize_batch(fun, np.full((3, 2), -1.0), np.array([-5.0, -5.0]), np.array([5.0, 5.0]))
    np.testing.assert_allclose(x, 1.0, atol=1e-5)
    x, _ = minimize_batch(fun, np.full((3, 2), -1.0), np.array([-5.0, -5.0]), np.array([0.5, 5.0]))
    np.testing.assert_allclose(x[:, 0], 0.5, atol=1e-8)  # pinned at the bound
    np.testing.assert_allclose(x[:, 1], 0.25, atol=1e-4)
