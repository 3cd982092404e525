"""Forecasts that carry form uncertainty (reports.uncertainty): far-looking backtests, averaged
forms, form agreement, the benchmark's calibration by ratio. Fast, no Ray."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from reports.uncertainty import (
    LOGLINEAR,
    Forecast,
    calibrated_coverage,
    far_backtest,
    forecast,
    forecast_points,
)

SIZES = np.geomspace(2e7, 2e9, 6)  # fitted rungs; forecasts go 10x beyond


def test_far_backtest_predicts_every_later_rung_from_every_cutoff():
    y = 0.8 * (SIZES / 2e7) ** -0.15
    e, rho = far_backtest("powerlaw", SIZES, y)
    # cutoffs after rungs 3, 4, 5 predict 3 + 2 + 1 later rungs
    assert e.size == rho.size == 6
    assert np.all(rho > 0) and rho.max() == pytest.approx(np.log(SIZES[-1] / SIZES[2]))
    assert np.abs(e).max() < 1e-6  # the true form, noiseless: no error at any distance
    e_sat, _ = far_backtest("powerlaw", SIZES, 0.3 + 0.5 * (SIZES / 2e7) ** -0.4)
    assert np.abs(e_sat).max() > 0.05  # the wrong form misses, more the further it reaches


def test_forecast_of_a_clean_law_is_accurate_agreed_and_covers():
    rng = np.random.default_rng(0)
    law = lambda n: 0.1 + 0.6 * (n / 2e7) ** -0.3  # noqa: E731
    y = law(SIZES) * np.exp(0.01 * rng.standard_normal(SIZES.size))
    f = forecast(SIZES, y, 2e10)
    assert isinstance(f, Forecast) and f.ratio == pytest.approx(10.0)
    truth = law(2e10)
    assert f.lo <= truth <= f.hi
    assert abs(f.value - truth) / truth < 0.1
    assert sum(x.weight for x in f.forms) == pytest.approx(1.0)
    assert {x.form for x in f.forms} == {"powerlaw", "saturating"}
    three = forecast(SIZES, y, 2e10, forms=("powerlaw", "saturating", LOGLINEAR))
    assert {x.form for x in three.forms} == {"powerlaw", "saturating", LOGLINEAR}
    assert three.lo <= truth <= three.hi


def test_forecast_from_report_points_uses_their_standard_errors():
    y = 0.8 * (SIZES / 2e7) ** -0.15
    points = {"rung": list("abcdef"), "params": list(SIZES), "value": list(y), "se": [0.004] * 6}
    f = forecast_points(points, 2e10, higher_is_better=False, bounded=False)
    truth = 0.8 * 1000**-0.15
    assert abs(f.value - truth) / truth < 0.01 and f.lo <= truth <= f.hi
    assert f.record()["extrapolation_ratio"] == pytest.approx(10.0)


def test_forms_that_part_far_out_make_the_forecast_form_limited():
    # A power law and a floor both fit 4 rungs, and 1000x out they part.
    N = np.geomspace(1e7, 1e8, 4)
    law = lambda n: 0.2 + 1.0 * (n / 1e7) ** -0.5  # noqa: E731
    f = forecast(N, law(N), 1e11, bootstrap=200)
    assert f.form_limited and not f.forms_agree
    assert 1.0 <= f.trusted_ratio < f.ratio
    assert "form-limited" in f.caveat() and f"{f.trusted_ratio:.1f}x" in f.caveat()
    assert f.lo <= law(1e11) <= f.hi


def test_without_a_backtest_the_interval_spans_every_credible_form():
    # 3 rungs: no backtest can rank the forms, so the interval must hold both forecasts.
    N = np.geomspace(1e7, 1e8, 3)
    y = 0.2 + 1.0 * (N / 1e7) ** -0.5
    f = forecast(N, y, 1e10, bootstrap=200)
    assert "no backtest" in f.why
    for form in f.forms:
        assert f.lo <= form.value <= f.hi, form


def test_bounded_accuracy_forecast_stays_inside_zero_one():
    N = np.geomspace(1e8, 1e10, 5)
    acc = np.array([0.55, 0.70, 0.84, 0.93, 0.975])  # racing toward the ceiling
    f = forecast(N, acc, 1e12, higher_is_better=True, bounded=True)
    assert 0.0 <= f.lo <= f.value <= f.hi <= 1.0


def test_calibration_by_ratio_is_read_from_the_benchmark_file(tmp_path):
    path = tmp_path / "cal.json"
    bins = [{"ratio_from": 1, "ratio_to": 8, "series": 9, "coverage": 0.95},
            {"ratio_from": 8, "ratio_to": 64, "series": 9, "coverage": 0.7}]  # fmt: skip
    path.write_text(json.dumps({"level": 0.95, "bins": bins}))
    assert calibrated_coverage(5.0, path) == 0.95
    assert calibrated_coverage(20.0, path) == 0.7
    assert calibrated_coverage(100.0, path) is None
    assert calibrated_coverage(5.0, tmp_path / "missing.json") is None
    f = Forecast(1.0, 0.9, 1.1, "powerlaw", "", 20.0, True, 20.0, 0.7)
    assert f.low_coverage and "covered only 70%" in f.warning("depth/abs_rel")
    assert Forecast(1.0, 0.9, 1.1, "powerlaw", "", 5.0, True, 5.0, 0.95).warning("x") is None
    assert f.record()["extrapolation_ratio"] == 20.0 and f.record()["calibrated_coverage"] == 0.7


def test_shipped_calibration_covers_the_ratios_a_ladder_bets_across():
    # The benchmark's table ships with the package; ten sizes out must have a calibrated number.
    assert calibrated_coverage(10.0) is not None and calibrated_coverage(5.0) is not None


def test_benchmark_runs_on_the_chinchilla_ladder():
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import forecast_benchmark as bench

    rows = bench.run("chinchilla", bench.after)
    assert [r.R for r in rows] == [5]  # 1/10 of the largest leaves fewer than 3 rungs
    (r,) = rows
    assert r.ratio > 5 and r.error_like and r.actual == pytest.approx(2.2044, abs=1e-3)
    assert r.rel_error < 0.05 and r.inside
    # Its law passes through its largest fitted rung: the by-miss table bins it under 10%, and a
    # forecast that misses by more lands in the flagged bin.
    assert r.largest_rung_miss < 0.1
    far = bench.Outcome(**{**r.__dict__, "largest_rung_miss": 0.45, "value": 0.0, "lo": 0.0, "hi": 0.0})
    table = bench.miss_table([r, far], ["chinchilla"])
    assert (
        "| **all** | 5 | 0%-10% | 1 | 100% |" in table
        and "| **all** | 5 | 30% or more | 1 | 0% | 100.0% |" in table
    )


def test_emergence_form_recovers_a_logistic_from_chance_and_forecasts_its_rise():
    from reports.forms import Emergence
    from reports.uncertainty import EMERGENCE

    a, b, c = -28.0, 1.4, 0.25  # near chance on the first rungs (1% of the way to 1 at 2e7)
    law = lambda n: c + (1 - c) / (1 + np.exp(-(a + b * np.log(n))))  # noqa: E731
    m = Emergence.fit(SIZES, law(SIZES), chance=c)
    assert m.coef == pytest.approx([a, b], rel=1e-6)
    assert m.accuracy(2e10) == pytest.approx(law(2e10), rel=1e-6)
    assert np.exp(m.log_q([2e10]))[0] == pytest.approx(1 - law(2e10), rel=1e-6)
    falling = Emergence.fit(SIZES, law(SIZES)[::-1], chance=c)
    assert falling.coef[1] == 0.0  # more parameters never hurt: no falling logistic
    kw = {"higher_is_better": True, "bounded": True}
    f = forecast(SIZES, law(SIZES), 2e10, **kw, forms=("powerlaw", "saturating", EMERGENCE), chance=c)
    assert EMERGENCE in {x.form for x in f.forms} and f.form == EMERGENCE
    assert abs(f.value - law(2e10)) / law(2e10) < 0.05 and f.lo <= law(2e10) <= f.hi
    without = forecast(SIZES, law(SIZES), 2e10, **kw, forms=("powerlaw", "saturating", EMERGENCE))
    assert EMERGENCE not in {x.form for x in without.forms}  # no chance level, no emergence form


def test_every_ladder_names_its_source_and_the_held_out_ladders_are_in_the_benchmark():
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import forecast_benchmark as bench

    from reports.collect import read_table

    readme = (bench.LADDERS / "README.md").read_text()
    names = sorted(p.stem for p in bench.LADDERS.glob("*.csv"))
    assert len(names) >= 4 and set(bench.HELD_OUT) <= set(names)
    for name in names:
        assert f"| `{name}` |" in readme, f"{name}: no source row in benchmarks/ladders/README.md"
        df = read_table(bench.LADDERS / f"{name}.csv")
        chance = df["chance"].dropna()
        assert ((chance >= 0) & (chance < 1)).all() and df.loc[chance.index, "bounded"].all()
    qwen = read_table(bench.LADDERS / "qwen2.5.csv")
    assert qwen.groupby(["task", "mode", "metric"]).ngroups == 22
    assert (qwen["params"] <= qwen["params"].max() / 10).groupby(qwen["task"]).sum().eq(4).all()


@pytest.mark.parametrize("higher_is_better", [True, False])
@pytest.mark.parametrize("se", [0.1, None])
def test_no_forecast_is_worse_than_the_worst_fitted_rung_beyond_its_noise(higher_is_better, se):
    # Noisy, barely improving rungs and a forecast 10x out: left alone, the forms' spread and the
    # extrapolation term reach an accuracy of 0 (or an error of 1). A larger model is not, in
    # expectation, worse than every smaller one; its measurement may be, by its noise: the rungs'
    # scatter about a line in log N at the t quantile (4 degrees of freedom here), and at least
    # the eval's standard error at the normal quantile (here the larger of the two).
    y = np.array([0.30, 0.41, 0.33, 0.44, 0.36, 0.45])
    if not higher_is_better:
        y = 1.0 - y
    ses = None if se is None else np.full(y.size, se)
    f = forecast(SIZES, y, 2e10, higher_is_better=higher_is_better, bounded=True, se=ses)
    x = np.log(SIZES)
    scatter = np.sqrt(np.sum((np.polyval(np.polyfit(x, y, 1), x) - y) ** 2) / (y.size - 2))
    noise = 1.96 * se if se is not None else 2.776 * scatter
    assert se is None or 1.96 * se > 2.776 * scatter
    if higher_is_better:
        assert f.lo == pytest.approx(y.min() - noise, abs=1e-3) and f.value >= y.min()
    else:
        assert f.hi == pytest.approx(y.max() + noise, abs=1e-3) and f.value <= y.max()


def test_a_falling_series_is_forecast_no_lower_than_its_worst_rung():
    # An accuracy that falls with size (rare, e.g. TruthfulQA): every form extrapolates the fall,
    # but the forecast stops at the worst rung's mean over its repeats (two seeds per size here).
    y = np.repeat([0.50, 0.46, 0.43, 0.40, 0.38, 0.36], 2) + np.tile([0.004, -0.004], 6)
    f = forecast(np.repeat(SIZES, 2), y, 2e10, higher_is_better=True, bounded=True)
    assert f.value == pytest.approx(0.36) and f.hi >= 0.36 > f.lo


def test_without_a_backtest_the_extrapolation_error_is_the_no_backtest_one(monkeypatch):
    # Three rungs allow no backtest: the interval's extrapolation term is KAPPA_NO_BACKTEST
    # (learned from three-rung forecasts of public ladders), and with six rungs it plays no part.
    from reports import uncertainty

    y = 0.8 * (SIZES / 2e7) ** -0.15

    def width(sizes, values, kappa):
        monkeypatch.setattr(uncertainty, "KAPPA_NO_BACKTEST", kappa)
        f = forecast(sizes, values, 2e10)
        return np.log(f.hi / f.lo)

    assert width(SIZES[:3], y[:3], 0.3) > 2 * width(SIZES[:3], y[:3], 0.03)
    assert width(SIZES, y, 0.3) == pytest.approx(width(SIZES, y, 0.03))


def test_a_law_that_misses_its_largest_fitted_rung_says_so():
    # SQuAD on OpenLM's RefinedWeb ladder (session 15): near 0 on three rungs, then the largest starts
    # to rise. The robust fits treat that rung as an outlier and forecast no rise (6.9B measured 0.49).
    N = np.array([1.06e7, 7.89e7, 1.54e8, 4.12e8])
    rising = np.array([0.0, 0.0012, 0.0026, 0.0495])
    f = forecast(N, rising, 6.89e9, higher_is_better=True, bounded=True, chance=0.0, bootstrap=100)
    assert f.misses_largest_rung and f.largest_rung_miss > 0.4
    assert "misses the largest rung" in f.caveat() and f.record()["largest_rung_miss"] == f.largest_rung_miss
    # A law that holds passes through its largest rung, and nothing is said.
    law = 0.8 * (N / 1e7) ** -0.1
    g = forecast(N, law, 6.89e9, bootstrap=100)
    assert g.largest_rung_miss < 0.05 and not g.misses_largest_rung and "misses" not in g.caveat()
    # Nor of a flat series, noisy or not: its range is its noise, not a bend.
    for flat in ([0.25, 0.2501, 0.2499, 0.2502], [0.3, 0.3, 0.3, 0.3 + 1e-12]):
        h = forecast(
            N, np.array(flat), 6.89e9, higher_is_better=True, bounded=True, chance=0.25, bootstrap=100
        )
        assert not h.misses_largest_rung, (flat, h.largest_rung_miss)
