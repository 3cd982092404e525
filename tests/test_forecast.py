"""Forecasts you can bet on: calibrated intervals, selection by backtest, bounded metrics,
registered forecasts scored when their rung lands (CLI, through a file and through MLflow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reports.fit import backtest_many, fit, fit_many, predict, select_form

SIZES = np.geomspace(2e7, 2.2e10, 7)  # 20M ... 22B, a ladder like the 4DS paper's; the last one is held out
NOISE = 0.02  # relative eval noise on the local ladder: a few percent
TRIALS = 200
LAWS = {  # the error-like quantity q of each form (an absrel, or 1 − an accuracy)
    "powerlaw": lambda N: 0.8 * (N / 2e7) ** -0.15,
    "saturating": lambda N: 0.12 + 0.5 * (N / 2e7) ** -0.35,
}


def draw(form: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return LAWS[form](SIZES) * np.exp(NOISE * rng.standard_normal((TRIALS, SIZES.size)))


def coverage(fits, held_out: np.ndarray) -> float:
    pred = np.array([[*predict(f, SIZES[-1])] for f in fits])[..., 0]
    return float(np.mean((pred[:, 1] <= held_out) & (held_out <= pred[:, 2])))


@pytest.mark.parametrize("form", list(LAWS))
def test_prediction_intervals_of_the_true_form_are_calibrated(form):
    """Fitted on 6 rungs, the 95% interval at 22B holds the value the rung measures in 90–98% of trials."""
    Y = draw(form, seed=1)
    fits = fit_many(form, SIZES[:-1], Y[:, :-1], bootstrap=200, seed=0)
    cov = coverage(fits, Y[:, -1])
    print(f"{form}: coverage {cov:.3f}")
    assert 0.90 <= cov <= 0.98, cov


def test_eval_standard_errors_give_calibrated_intervals_for_a_bounded_accuracy():
    """Accuracy = 1 − saturating error, with its se known: the se is the noise, not the residuals."""
    Y = draw("saturating", seed=2)
    acc = 1 - Y
    se = NOISE * LAWS["saturating"](SIZES)  # the noise in metric units
    fits = fit_many(
        "saturating",
        SIZES[:-1],
        acc[:, :-1],
        higher_is_better=True,
        bounded=True,
        se=np.broadcast_to(se[:-1], (TRIALS, 6)),
        bootstrap=200,
        seed=0,
    )
    assert fits[0].sigma_from == "se" and fits[0].target == "1 - value"
    cov = coverage(fits, acc[:, -1])
    print(f"saturating accuracy with se: coverage {cov:.3f}")
    assert 0.90 <= cov <= 0.98, cov


@pytest.mark.parametrize("true", list(LAWS))
def test_auto_picks_the_true_form_when_the_forms_disagree(true):
    """Where the two forms' forecasts at 22B differ by more than the noise, the backtest
    picks the form the data came from in at least 80% of trials."""
    Y = draw(true, seed=3)[:, :-1]
    errors, at_target = {}, {}
    for form in LAWS:
        b = backtest_many(form, SIZES[:-1], Y, bootstrap=0)
        errors[form] = np.mean(np.abs(b["predicted"] - b["actual"]) / b["actual"], 1)
        at_target[form] = np.array(
            [predict(f, SIZES[-1])[0][0] for f in fit_many(form, SIZES[:-1], Y, bootstrap=0)]
        )
    picks = np.array([select_form({f: errors[f][t] for f in LAWS})[0] for t in range(TRIALS)])
    differ = np.abs(at_target["powerlaw"] - at_target["saturating"]) > NOISE * LAWS[true](SIZES[-1])
    rate = float(np.mean(picks[differ] == true))
    print(
        f"true {true}: picked in {rate:.1%} of {differ.sum()} trials where the forms differ "
        f"({np.mean(picks == true):.1%} of all)"
    )
    assert differ.sum() >= 40 and rate >= 0.80, (rate, differ.sum())


def test_bounded_metrics_never_leave_zero_one():
    """Random ladders (noisy, flat, falling, near 0 and near 1): every prediction and interval
    bound of every size law stays in [0, 1], also far beyond the ladder."""
    rng = np.random.default_rng(7)
    far = np.geomspace(1e6, 1e15, 25)
    for trial in range(20):
        n = int(rng.integers(4, 8))
        N = np.sort(rng.choice(np.geomspace(1e7, 1e11, 20), n, replace=False))
        level, slope = rng.uniform(0.001, 0.999), rng.uniform(-0.3, 0.3)
        acc = np.clip(level + slope * np.log10(N / N[0]) / 4 + rng.normal(0, 0.05, n), 0.0005, 0.9995)
        hib = bool(rng.integers(0, 2))
        for form in ("powerlaw", "saturating"):
            f = fit(
                form, N, acc, higher_is_better=hib, bounded=True, bootstrap=100, seed=trial, extrapolate=False
            )
            v, lo, hi = predict(f, far)
            for a in (v, lo, hi):
                assert np.all((a >= 0) & (a <= 1)), (trial, form, a.min(), a.max())


# ----------------------------------------------------------------- end to end, CLI


LADDER = {"S": 2e7, "B": 8.8e7, "L": 3e8, "H": 6.3e8, "g": 1.8e9, "G": 4e9, "e": 2.2e10}
TASKS = [
    ("point_tracking", "aj", lambda N: 1 - (0.3 + 0.5 * (N / 1e7) ** -0.3)),
    ("depth", "abs_rel", lambda N: 0.9 * (N / 1e7) ** -0.12),
    ("action", "top1", lambda N: 1 - (0.25 + 0.6 * (N / 1e7) ** -0.25)),
    ("camera_pose", "epe", lambda N: 0.05 + 0.4 * (N / 1e7) ** -0.3),
    ("box_tracking", "iou", lambda N: 1 - (0.4 + 0.4 * (N / 1e7) ** -0.2)),
]


def ladder_table(tasks=TASKS, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {
            "model": name,
            "params": N,
            "task": task,
            "metric": metric,
            "value": law(N) * np.exp(0.01 * rng.standard_normal()),
        }
        for name, N in LADDER.items()
        for task, metric, law in tasks
    ]
    return pd.DataFrame(rows)


# Resamples per fit in the CLI tests below: they check that intervals exist, hold their forecast and
# stay in [0, 1], and that forecasts are registered and scored, not how well the intervals cover (the
# calibration tests above do that, with 200 resamples); 20 instead of 100 takes ~3 s off each report.
CLI_BOOTSTRAP = 20


def cli(*args):
    from orchestrator.cli import app

    return CliRunner().invoke(app, ["report", *map(str, args)])


def test_report_from_table_registers_then_scores_forecasts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = ladder_table()
    path = tmp_path / "ladder.csv"
    full[full["model"] != "e"].to_csv(path, index=False)  # 22B left out

    first = cli("--from", path, "--predict", "22B", "--bootstrap", CLI_BOOTSTRAP, "--out", "rep")
    assert first.exit_code == 0, first.output
    assert "selected form per series" in first.output and "depth/abs_rel (frozen)" in first.output
    assert "saturating" in first.output and "%" in first.output  # selected forms and backtest errors
    doc = json.loads((tmp_path / "rep" / "predictions.json").read_text())
    assert doc["target"]["size"] == "22B" and len(doc["predictions"]) == 5
    for p in doc["predictions"]:
        assert p["lo"] <= p["value"] <= p["hi"]
        if p["metric"] in ("aj", "top1", "iou"):
            assert 0 <= p["lo"] and p["hi"] <= 1
    stored = list((tmp_path / "predictions").glob("*.json"))
    assert len(stored) == 1 and "1 registered forecast" not in first.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert (
        md.index("![scaling]")
        < md.index("## Findings")
        < md.index("## Forecasts vs outcomes")
        < md.index("## Fits")
    )
    assert "5 registered forecast(s), none scored yet" in md

    full.to_csv(path, index=False)  # the 22B rung lands
    second = cli("--from", path, "--bootstrap", CLI_BOOTSTRAP, "--out", "rep")
    assert second.exit_code == 0, second.output
    assert "forecasts vs outcomes" in second.output and "Coverage:" in second.output and "/5" in second.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "scored: observed" in md and "Coverage:" in md
    assert len(list((tmp_path / "predictions").glob("*.json"))) == 1  # scoring never registers


def test_bad_form_and_bad_predict_are_one_message_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ladder.csv"
    ladder_table(TASKS[:1]).to_csv(path, index=False)
    bad = cli("--from", path, "--fit", "cubic")
    assert bad.exit_code == 2 and "unknown fit form 'cubic'" in bad.output and "Traceback" not in bad.output
    bad = cli("--from", path, "--predict", "huge", "--bootstrap", 0)
    assert bad.exit_code == 2 and "--predict" in bad.output and "write it like 22B" in bad.output


def test_report_through_mlflow_records_and_scores_forecasts(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from contracts.names import ROLE_TAG, RUNG_KEY_TAG, RUNG_TAG, STATUS_TAG, eval_metric_key
    from reports.forecasts import PREDICTION_TAG_PREFIX

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, run_name="demo", tags={ROLE_TAG: "sweep"}).info.run_id
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "sweep.json").write_text(json.dumps({"tracking_uri": uri}))
    table = ladder_table(TASKS[:2])

    def add_rung(name):
        N = LADDER[name]
        tags = {
            ROLE_TAG: "rung",
            RUNG_TAG: name,
            RUNG_KEY_TAG: f"{name}-abc123",
            STATUS_TAG: "done",
            "mlflow.parentRunId": parent,
        }
        run = client.create_run(exp, run_name=name, tags=tags).info.run_id
        for k, v in {
            "encoder_params": N,
            "flops_per_clip": 1e3 * N,
            "batch_size": 8,
            "steps": 20,
            "num_tokens": 1568,
        }.items():
            client.log_param(run, k, v)
        for r in table[table["model"] == name].itertuples():
            client.log_metric(run, eval_metric_key(r.task, "frozen", r.metric), r.value, step=20)

    for name in list(LADDER)[:-1]:
        add_rung(name)
    first = cli("--predict", "22B", "--bootstrap", CLI_BOOTSTRAP)
    assert first.exit_code == 0, first.output
    tags = client.get_run(parent).data.tags
    ((key, value),) = ((k, v) for k, v in tags.items() if k.startswith(PREDICTION_TAG_PREFIX))
    sha = value.split("sha256=")[1].split()[0]
    assert key == PREDICTION_TAG_PREFIX + sha[:12] and "target=22B" in value and "registered=20" in value
    logged = {a.path for a in client.list_artifacts(parent, "predictions")}
    assert logged == {f"predictions/{sha}.json"}
    assert "report/predictions.json" in {a.path for a in client.list_artifacts(parent, "report")}
    assert (tmp_path / "runs" / "demo" / "predictions" / f"{sha}.json").exists()

    add_rung("e")  # the 22B rung lands
    second = cli("--bootstrap", CLI_BOOTSTRAP)
    assert second.exit_code == 0, second.output
    assert "Coverage:" in second.output and "/2 " in second.output
    fits = json.loads((tmp_path / "runs" / "demo" / "report" / "fits.json").read_text())
    rows = fits["forecasts"]["rows"]
    assert len(rows) == 2 and all(r["observed"] is not None and r["sha256"] == sha for r in rows)
    assert fits["forecasts"]["scored"] == 2


def test_report_at_a_tenth_of_the_target_shows_ratio_agreement_and_coverage(tmp_path, monkeypatch):
    """Fitted on rungs up to 1/10 of the target, every forecast carries its extrapolation ratio,
    whether the forms agree and the benchmark's coverage at that ratio, in predictions.json and
    beside the forecast in report.md and report.html; below 80% coverage the console warns."""
    monkeypatch.chdir(tmp_path)
    table = ladder_table()
    path = tmp_path / "ladder.csv"
    table[table["params"] <= 1.8e9].to_csv(path, index=False)  # 20M ... 1.8B; 22B is 12x out
    out = cli("--from", path, "--predict", "22B", "--bootstrap", CLI_BOOTSTRAP, "--out", "rep")
    assert out.exit_code == 0, out.output
    doc = json.loads((tmp_path / "rep" / "predictions.json").read_text())
    assert doc["predictions"]
    for p in doc["predictions"]:
        assert p["extrapolation_ratio"] == pytest.approx(22e9 / 1.8e9)
        assert p["calibrated_coverage"] is not None and isinstance(p["forms_agree"], bool)
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    forecast_lines = [line for line in md.splitlines() if "; forecast at 22B:" in line]
    assert len(forecast_lines) == len(doc["predictions"])
    for line in forecast_lines:  # beside each forecast: ratio, coverage, agreement
        assert "12.2x beyond the largest rung, benchmark coverage" in line
        assert "forms agree" in line or "form-limited" in line
    assert html.count("12.2x beyond the largest rung, benchmark coverage") == len(forecast_lines)
    low = [p for p in doc["predictions"] if p["calibrated_coverage"] < 0.8]
    assert ("intervals covered only" in out.output) == bool(low)


@pytest.mark.parametrize("coverage, warns", [(0.62, True), (0.92, False), (None, False)])
def test_console_warns_once_when_the_benchmark_coverage_at_the_ratio_is_below_80(tmp_path, coverage, warns):
    from reports.console import summary
    from reports.results import Forecast, Report, Series

    def series(metric):
        s = Series("depth", "frozen", metric, "synthetic", f"depth/{metric}", False, False, [], {})
        s.forecast = Forecast("powerlaw", 22e9, "22B", None, 0.3, 0.2, 0.4, 0.01, 40.0, coverage, True, 40.0)
        return s

    report = Report("s", "params", 1e-3, 0, 0, "final", series=[series("abs_rel"), series("rmse")])
    lines = [line for line in summary(report, tmp_path, "22B", "22B") if isinstance(line, str)]
    warned = [line for line in lines if line.startswith("warning:")]
    expected = "warning: 22B is 40x beyond the largest rung; at that distance the benchmark's 95% intervals"
    assert warned == ([f"{expected} covered only 62% (docs/forecasting.md)"] if warns else [])


@pytest.mark.parametrize(
    "misses, named",
    [
        ([0.9, 0.1], "depth/m0"),
        ([0.30, 0.29], "depth/m0"),  # the threshold itself counts
        ([0.5, 0.4, 0.35, 0.3, 0.31], "depth/m0, depth/m1, depth/m2 and 2 more"),
        ([0.1, 0.0], None),
        ([None, None], None),
    ],
)
def test_console_names_the_series_whose_law_misses_its_largest_rung_in_one_line(tmp_path, misses, named):
    from reports.console import summary
    from reports.results import Forecast, Report, Series

    def series(metric, miss):
        s = Series("depth", "frozen", metric, "synthetic", f"depth/{metric}", False, False, [], {})
        s.forecast = Forecast(
            "powerlaw", 22e9, "22B", None, 0.3, 0.2, 0.4, 0.01, 10.0, 0.95, True, 10.0, largest_rung_miss=miss
        )
        return s

    report = Report(
        "s", "params", 1e-3, 0, 0, "final", series=[series(f"m{i}", m) for i, m in enumerate(misses)]
    )
    lines = [line for line in summary(report, tmp_path, "22B", "22B") if isinstance(line, str)]
    warned = [line for line in lines if line.startswith("warning:")]
    expected = (
        "warning: the fitted law misses the largest rung by 30% or more of the rungs' range for "
        f"{named}: the forecast may miss a bend there (docs/forecasting.md)"
    )
    assert warned == ([expected] if named else [])
