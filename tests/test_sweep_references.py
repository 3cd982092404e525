"""A mini sweep with reference models end to end on real Ray and MLflow: one tiny transformers video
model and one image model, saved to a temp dir (no network), evaluated beside a two-rung ladder,
logged as child runs, listed by `sweep status`, drawn and tabled by `sweep report`; a rerun does
nothing new. The sweep is the session's shared one (conftest.mini_sweep)."""

import json
import subprocess
import sys

import pytest
from conftest import MINI, MINI_TASKS
from mlflow.tracking import MlflowClient

from contracts.layout import ReferencePaths, read_json
from contracts.names import REFERENCE_ROLE, ROLE_TAG, eval_metric_key
from contracts.spec import load_spec

pytestmark = pytest.mark.slow
SWEEP = [sys.executable, "-m", "orchestrator"]


def test_reference_models_are_evaluated_logged_listed_drawn_and_tabled(mini_sweep):
    """The shared mini sweep (conftest.mini_sweep): a two-rung ladder beside two references, evaluated on
    depth, action and box tracking."""
    tmp_path, spec = mini_sweep["root"], mini_sweep["spec"]
    run = mini_sweep["run"]
    assert run.returncode == 0, run.stdout + run.stderr

    s = load_spec(spec)
    refs = s.reference_configs()
    for ref in refs:
        for task in MINI_TASKS:
            rec = read_json(ReferencePaths.for_reference(ref, tmp_path / "runs").eval_record(task, "frozen"))
            assert rec["state"] == "done" and rec["logged"] and rec["starts"] == 1, rec
            assert rec["reference"]["num_params"] > 0

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(MINI).experiment_id
    runs = client.search_runs([exp])
    parent = next(r for r in runs if r.data.tags[ROLE_TAG] == "sweep")
    logged = {r.data.params["reference"]: r for r in runs if r.data.tags[ROLE_TAG] == REFERENCE_ROLE}
    assert set(logged) == {"vmae", "dino"}
    for r in logged.values():
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"source", "id", "num_params", "layer", "input_shape"} <= set(r.data.params)
        assert eval_metric_key("depth", "frozen", "abs_rel") in r.data.metrics
    assert (
        logged["vmae"].data.params["layer"] == "block 1 of 3"
    )  # 4DS's rule: entry int(4 * 0.95) - 1 = 2 of [emb, emb, b1, b2]
    assert (
        logged["dino"].data.params["input_shape"] == "1x16x16 per frame"
    )  # an image model: every frame of the clip

    status = subprocess.run(
        [*SWEEP, "status", str(spec), "--json"], cwd=tmp_path, capture_output=True, text=True
    )
    rows = {r["rung"]: r for r in json.loads(status.stdout)}
    for ref in refs:
        assert rows[ref.key]["kind"] == "reference" and rows[ref.key]["state"] == "done"
        assert rows[ref.key]["evals_done"] == rows[ref.key]["evals_total"] == len(MINI_TASKS)

    report = mini_sweep["report"]
    assert report.returncode == 0, report.stdout + report.stderr
    out = tmp_path / "runs" / MINI / "report"
    fits = json.loads((out / "fits.json").read_text())
    assert {r["name"] for r in fits["references"]} == {"vmae", "dino"}  # never a point of a fitted series
    assert all(p not in {"vmae", "dino"} for s_ in fits["series"] for p in s_["points"]["rung"])
    md = (out / "report.md").read_text()
    assert "## Reference models" in md
    for name in ("vmae", "dino"):
        assert f"| {name} | reference |" in md  # in the ladder-vs-references table
        assert any(f" vs {name} (" in f for f in fits["reference_findings"])

    import pandas as pd

    from reports.figures import scaling_figure
    from reports.references import split
    from reports.results import Report

    ladder, _ = split(pd.read_parquet(out / "results.parquet"))  # results.parquet keeps every row
    fig = scaling_figure(Report.load(out / "fits.json"), ladder)
    evals = [ax for ax in fig.axes if ax.get_title().split("\n")[0] in ("depth", "action")]
    assert len(evals) == 2  # the pretraining loss panel has no reference to draw
    for ax in evals:
        labels = ax.get_legend_handles_labels()[1]
        assert "vmae (reference)" in labels and "dino (reference)" in labels, labels

    again = mini_sweep["again"]  # `sweep run` again on the finished sweep
    assert again.returncode == 0, again.stdout + again.stderr
    for ref in refs:
        rec = read_json(ReferencePaths.for_reference(ref, tmp_path / "runs").eval_record("depth", "frozen"))
        assert rec["starts"] == 1  # a rerun does nothing new
