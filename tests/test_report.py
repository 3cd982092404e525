"""`sweep report` internals: tables in (MLflow, CSV/Parquet), report files out."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_fit import check_replication, chinchilla_points

from contracts.spec import Report
from contracts.tasks import higher_is_better
from reports.collect import ReportError, collect_mlflow, read_table
from reports.publish import log_report_to_mlflow
from reports.report import make_report, predict_from_fits
from reports.units import format_size, parse_size

RUNGS = {"S": 22e6, "B": 88e6, "L": 300e6, "H": 630e6}


def synthetic_table(
    rungs=RUNGS, steps=(100, 200), tasks=(("depth", "absrel"), ("tracking", "aj"))
) -> pd.DataFrame:
    """Noiseless laws: absrel = 5 N^-0.25 (powerlaw), aj = 1 − (0.2 + 2 N^-0.2)."""
    rows = []
    for rung, N in rungs.items():
        for step in steps:
            late = step / max(steps)
            for task, metric in tasks:
                v = 5 * N**-0.25 if metric == "absrel" else 1 - (0.2 + 2 * N**-0.2)
                v = v / late if metric == "absrel" else v * late
                for mode in ("frozen", "finetune"):
                    rows.append(
                        {
                            "sweep": "demo",
                            "rung": rung,
                            "rung_key": f"{rung}-abc123",
                            "params": N,
                            "step": step,
                            "task": task,
                            "mode": mode,
                            "metric": metric,
                            "value": v,
                            "train_flops": 1e9 * N * step,
                            "clips_seen": 32.0 * step,
                        }
                    )
    return pd.DataFrame(rows)


def run_report(source, out, **kw) -> dict:
    """The function layer of `sweep report`; a CLI variant can replace this one helper."""
    report = make_report(source, out, log=lambda line: None, **kw)
    return {"fits": json.loads((out / "fits.json").read_text()), "result": report.to_json(), "report": report}


def fitted(result: dict, task: str, metric: str, mode: str = "frozen", form: str = "powerlaw") -> dict:
    s = next(s for s in result["series"] if (s["task"], s["metric"], s["mode"]) == (task, metric, mode))
    return next(e for e in s["fits"] if e["form"] == form)


def test_report_files_and_self_contained_html(tmp_path):
    # 20 resamples: what is checked here (files, a self-contained page, exact laws) needs no intervals.
    res = run_report(synthetic_table(), tmp_path, fits=["powerlaw", "saturating"], bootstrap=20)["result"]
    for name in (
        "report.html",
        "report.md",
        "fits.json",
        "results.parquet",
        "scaling.png",
        "scaling.svg",
        "compute.png",
        "compute.svg",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    html = (tmp_path / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html and "<link" not in html
    # Fits use the final checkpoint: the noiseless laws come back exactly.
    f = fitted(res, "depth", "absrel")["fit"]
    assert f["params"]["b"] == pytest.approx(-0.25, rel=1e-6)
    assert abs(f["extrapolation"]["rel_error"]) < 1e-6
    assert fitted(res, "tracking", "aj", form="saturating")["fit"]["params"]["b"] == pytest.approx(
        0.2, rel=1e-3
    )
    assert "leave-largest-out" in html and "−" not in f["target"]
    assert pd.read_parquet(tmp_path / "results.parquet").shape[0] == len(synthetic_table())


def test_not_fitted_missing_failed_and_non_positive_are_named(tmp_path):
    t = synthetic_table()
    t = t[~((t["rung"] == "H") & (t["task"] == "depth"))]  # H never evaluated depth
    t = pd.concat(
        [
            t,
            synthetic_table({"G": 1.8e9})[lambda d: d["task"] == "tracking"].assign(
                status="failed", failure="OOM"
            ),
        ]
    )
    # aj is bounded, so every size law fits its error 1 − aj: a perfect score is what a log fit cannot take.
    t.loc[(t["rung"] == "S") & (t["metric"] == "aj"), "value"] = 1.0
    two = synthetic_table({"S": 22e6, "B": 88e6}, tasks=(("pose", "epe"),))
    res = run_report(pd.concat([t, two]), tmp_path, fits=["powerlaw"], bootstrap=0)["result"]
    notes = "\n".join(res["notes"])
    assert "rung G failed (OOM)" in notes
    assert "depth/absrel (frozen): no value for rung(s) H" in notes
    assert re.search(
        r"tracking/aj \(frozen\) powerlaw: 1 - value is not positive .* S \(step 200: 1\)", notes
    )
    pose = fitted(res, "pose", "epe")
    assert (
        pose["status"] == "not fitted"
        and "at least 3 rungs, got 2" in pose["reason"]
        and "S, B" in pose["reason"]
    )
    assert fitted(res, "tracking", "aj")["fit"]["n_rungs"] == 3  # B, L, H; not S (zero) nor G (failed)
    md = (tmp_path / "report.md").read_text()
    for text in (
        "not fitted: needs at least 3 rungs",
        "rung G failed",
        "no value for rung(s) H",
        "is not positive",
    ):
        assert text in md and text in (tmp_path / "report.html").read_text()


def test_predict_from_fits_sizes(tmp_path):
    run_report(synthetic_table(), tmp_path, fits=["powerlaw"], bootstrap=200)
    rows = predict_from_fits(tmp_path / "fits.json", "22B")
    assert len(rows) == 4 and {r["size"] for r in rows} == {"22B"}
    depth = next(r for r in rows if r["series"] == "depth/absrel (frozen)")
    assert depth["value"] == pytest.approx(5 * 22e9**-0.25, rel=1e-5)
    assert depth["lo"] <= depth["value"] <= depth["hi"]
    assert predict_from_fits(tmp_path / "fits.json", 630e6)[0]["size"] == "630M"
    with pytest.raises(ReportError, match="write it like 22B"):
        predict_from_fits(tmp_path / "fits.json", "huge")


def test_read_table_errors_name_file_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,metric,value\nS,aj,0.5\n")
    with pytest.raises(ReportError, match=r"bad\.csv: missing column 'params'"):
        read_table(bad)
    bad.write_text("model,params,metric,value\nS,22M,aj,0.5\n")
    with pytest.raises(ReportError, match=r"bad\.csv, line 2: column 'params' has a non-numeric value '22M'"):
        read_table(bad)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ReportError, match=r"corrupt\.parquet: cannot read"):
        read_table(corrupt)
    with pytest.raises(ReportError, match="no such file"):
        read_table(tmp_path / "absent.csv")


def test_read_table_defaults(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("model,params,metric,value\nS,2e7,top1,0.5\nS,2e7,baseline_top1,0.4\nB,8e7,abs_rel,0.2\n")
    t = read_table(path)
    assert list(t["mode"].unique()) == ["frozen"] and t["rung_key"].tolist() == t["rung"].tolist()
    assert dict(zip(t["metric"], t["higher_is_better"], strict=True)) == {
        "top1": True,
        "baseline_top1": True,
        "abs_rel": False,
    }


def test_direction_and_sizes():
    for m in ("absrel", "epe", "loss", "rmse_log", "rotation_err_deg"):
        assert not higher_is_better(m)
    for m in ("aj", "top1", "iou", "delta1", "occlusion_accuracy"):
        assert higher_is_better(m)
    assert [format_size(v) for v in (22e6, 88e6, 1.848e9, 3.811e9, 21.495e9)] == [
        "22M",
        "88M",
        "1.8B",
        "3.8B",
        "21B",
    ]
    assert parse_size("22B") == 22e9 and parse_size("300M") == 3e8 and parse_size(" 1.5e9 ") == 1.5e9


def test_collect_from_mlflow_and_log_report(tmp_path):
    from mlflow.tracking import MlflowClient

    from contracts.names import FAILURE_TAG, ROLE_TAG, RUNG_KEY_TAG, RUNG_TAG, STATUS_TAG, eval_metric_key

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, run_name="demo", tags={ROLE_TAG: "sweep"}).info.run_id
    for name, N, status in (
        ("S", 22e6, "done"),
        ("B", 88e6, "done"),
        ("L", 300e6, "done"),
        ("H", 630e6, "failed"),
    ):
        tags = {
            ROLE_TAG: "rung",
            RUNG_TAG: name,
            RUNG_KEY_TAG: f"{name}-abc123",
            STATUS_TAG: status,
            "mlflow.parentRunId": parent,
        }
        if status == "failed":
            tags[FAILURE_TAG] = "CUDA OOM"
        run = client.create_run(exp, run_name=name, tags=tags).info.run_id
        for k, v in {
            "encoder_params": N,
            "flops_per_clip": 1e3 * N,
            "batch_size": 8,
            "steps": 20,
            "num_tokens": 1568,
        }.items():
            client.log_param(run, k, v)
        client.log_metric(run, "train/loss", 1.0, step=5)
        if status == "failed":
            continue
        for step in (10, 20):
            client.log_metric(
                run, eval_metric_key("depth", "frozen", "absrel"), 5 * N**-0.25 * 20 / step, step=step
            )
            client.log_metric(run, eval_metric_key("depth", "finetune", "absrel"), 4 * N**-0.25, step=step)

    t = collect_mlflow(uri, "demo")
    evals = t[t["metric"].notna()]
    assert len(evals) == 3 * 2 * 2 and set(evals["mode"]) == {"frozen", "finetune"}
    row = evals[(evals["rung"] == "B") & (evals["step"] == 10) & (evals["mode"] == "frozen")].iloc[0]
    assert (
        row["train_flops"] == 1e3 * 88e6 * 8 * 10 and row["clips_seen"] == 80 and row["tokens"] == 80 * 1568
    )
    assert row["rung_key"] == "B-abc123" and not row["higher_is_better"] and row["task"] == "depth"
    failed = t[t["rung"] == "H"]
    assert len(failed) == 1 and failed["metric"].isna().all() and failed["failure"].iloc[0] == "CUDA OOM"
    with pytest.raises(ReportError, match="no MLflow experiment named 'nope'"):
        collect_mlflow(uri, "nope")

    out = tmp_path / "report"
    res = run_report(t, out, bootstrap=20)["result"]  # a failure note, an exact law, the upload: no intervals
    assert "rung H failed (CUDA OOM)" in "\n".join(res["notes"])
    assert fitted(res, "depth", "absrel")["fit"]["params"]["b"] == pytest.approx(-0.25, rel=1e-6)
    assert log_report_to_mlflow(uri, "demo", out) == parent
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/fits.json", "report/scaling.png"} <= logged
    assert np.isclose(float(t["params"].max()), 630e6)


def test_cli_report_from_file_gives_the_same_numbers(tmp_path, monkeypatch):
    """`sweep report --from FILE --fit chinchilla` through the real CLI: the Chinchilla data in the `--from`
    format gives the replication's numbers, files in --out, exit 0. (One fit of the 240 points serves
    both: the CLI calls the function layer, make_report, that a separate test used to run again.)"""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    pts = chinchilla_points()
    path = tmp_path / "chinchilla.csv"
    pd.DataFrame(
        {
            "model": [f"{n:.6g}" for n in pts["N"]],
            "params": pts["N"],
            "tokens": pts["D"],
            "metric": "loss",
            "value": pts["loss"],
        }
    ).to_csv(path, index=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--from",
            str(path),
            "--fit",
            "chinchilla",
            "--bootstrap",
            "200",
            "--out",
            "out",
            "--predict",
            "70B",
        ],
    )
    assert result.exit_code == 0, result.output
    e = fitted(json.loads((tmp_path / "out" / "fits.json").read_text()), "", "loss", form="chinchilla")
    assert e["D"] == "tokens" and e["fit"]["n_points"] == 240 and e["fit"]["target"] == "value"
    check_replication(e["fit"]["params"], e["fit"]["loss"])
    lo, hi = e["fit"]["ci"]["E"]
    assert lo < e["fit"]["params"]["E"] < hi
    assert (tmp_path / "out" / "chinchilla.png").exists()
    rows = predict_from_fits(tmp_path / "out" / "fits.json", "70B")
    assert rows[0]["form"] == "chinchilla" and rows[0]["lo"] <= rows[0]["value"] <= rows[0]["hi"]
    assert "predictions at 70B" in result.output and (tmp_path / "out" / "report.html").exists()
    bad = CliRunner().invoke(app, ["report", "--from", str(tmp_path / "missing.csv")])
    assert bad.exit_code == 2 and "missing.csv" in bad.output


def test_final_results_table_has_rungs_as_columns_smallest_first_and_the_baseline_beside(tmp_path):
    t = synthetic_table()
    base = t[(t["metric"] == "absrel")].assign(metric="baseline_absrel", value=0.9)
    run_report(pd.concat([t, base]), tmp_path, bootstrap=50)
    md = (tmp_path / "report.md").read_text().split("## Final-checkpoint results")[1]
    header = md.strip().splitlines()[0]
    sizes = sorted(RUNGS.values())
    assert header.startswith("| series |") and header.rstrip(" |").endswith("trivial baseline")
    positions = [header.index(f"{name} (") for name, _ in sorted(RUNGS.items(), key=lambda kv: kv[1])]
    assert positions == sorted(positions) and len(positions) == len(sizes)
    row = next(line for line in md.splitlines() if line.startswith("| depth/absrel (frozen)"))
    assert row.rstrip(" |").endswith("0.9") and "baseline_absrel" not in md


@pytest.mark.parametrize("x", typing.get_args(Report.model_fields["x"].annotation))
def test_every_x_the_spec_accepts_makes_a_report(tmp_path, monkeypatch, x):
    """`report.x`: every value the spec's validator accepts gives a report whose laws are fitted against
    it."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    monkeypatch.chdir(tmp_path)
    synthetic_table().to_csv("t.csv", index=False)
    Path("s.yaml").write_text(f"name: demo\nladder: [{{size: S, steps: 10}}]\nreport: {{x: {x}}}\n")
    result = CliRunner().invoke(
        app, ["report", "s.yaml", "--from", "t.csv", "--out", "out", "--bootstrap", "20"]
    )
    assert result.exit_code == 0, result.output
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits["x"] == x and (tmp_path / "out" / "report.html").exists()
    assert {e["x"] for s in fits["series"] for e in s["fits"] if e["status"] == "fitted"} == {x}


def test_an_x_the_report_cannot_draw_is_a_spec_error(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    (tmp_path / "s.yaml").write_text("name: demo\nladder: [{size: S, steps: 10}]\nreport:\n  x: flops\n")
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "s.yaml")])
    assert result.exit_code == 2 and "s.yaml:4: report.x" in result.output


def test_val_loss_and_standard_errors_flow_from_mlflow_and_a_trendless_series_is_unresolved(tmp_path):
    """val/loss becomes the first panel and a fitted series; `<metric>_se` becomes the se column; a
    metric built to have no trend (flat within its error bars) is reported "no trend resolved"."""
    from mlflow.tracking import MlflowClient

    from contracts.names import ROLE_TAG, RUNG_KEY_TAG, RUNG_TAG, STATUS_TAG, VAL_LOSS_METRIC, eval_metric_key
    from reports import figures

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    flat = [0.52, 0.47, 0.51, 0.49]
    for i, (name, N) in enumerate(RUNGS.items()):
        tags = {ROLE_TAG: "rung", RUNG_TAG: name, RUNG_KEY_TAG: f"{name}-abc123", STATUS_TAG: "done"}
        run = client.create_run(exp, run_name=name, tags=tags).info.run_id
        params = {
            "encoder_params": N,
            "flops_per_clip": 1e3 * N,
            "batch_size": 8,
            "steps": 20,
            "num_tokens": 64,
        }
        for k, v in params.items():
            client.log_param(run, k, v)
        for step in (10, 20):
            loss = 3 * N**-0.1 * (1 + 0.01 * (-1) ** i) * (20 / step) ** 0.3
            client.log_metric(run, VAL_LOSS_METRIC, loss, step=step)
            for metric, value, se in (("top1", flat[i], 0.04), ("baseline_top1", 0.1, 0.02)):
                client.log_metric(run, eval_metric_key("action", "frozen", metric), value, step=step)
                client.log_metric(run, eval_metric_key("action", "frozen", f"{metric}_se"), se, step=step)

    t = collect_mlflow(uri, "demo")
    assert not t["metric"].str.endswith("_se").any()
    val = t[t["metric"] == "val_loss"]
    assert len(val) == 8 and set(val["task"]) == {"pretraining"} and not val["higher_is_better"].any()
    assert val["se"].isna().all()
    assert (t.loc[t["metric"] == "top1", "se"] == 0.04).all()
    assert (t.loc[t["metric"] == "baseline_top1", "se"] == 0.02).all()

    made = run_report(t, tmp_path / "report", fits=["powerlaw"], bootstrap=100)
    res = made["result"]
    by = {s["metric"]: s for s in res["series"]}
    assert by["val_loss"]["trend"]["resolved"] and by["val_loss"]["points"]["step"] == [20] * 4
    assert by["top1"]["points"]["se"] == [0.04] * 4
    assert by["top1"]["trend"]["resolved"] is False
    md = (tmp_path / "report" / "report.md").read_text()
    finding = next(line for line in md.splitlines() if line.startswith("- action/top1 (frozen): "))
    assert "trend NOT resolved" in finding or "trend points the WRONG way" in finding
    table = md.split("## Final-checkpoint results")[1]
    row = next(line for line in table.splitlines() if line.startswith("| action/top1 (frozen)"))
    assert "no trend resolved" in row
    assert "0.52 ± 0.04" in table
    fig = figures.scaling_figure(made["report"], t)
    first, action = fig.axes[0], fig.axes[1]
    assert first.get_title().startswith("pretraining") and "trend resolved" == first.texts[0].get_text()
    assert action.get_title().startswith("action") and action.texts[0].get_text() == "no trend resolved"
    fits = json.loads((tmp_path / "report" / "fits.json").read_text())
    assert any(s["metric"] == "val_loss" for s in fits["series"])
