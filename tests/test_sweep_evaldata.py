"""A mini sweep (real Ray, DeepSpeed, MLflow) whose box-tracking evals read a GOT-10k fixture on disk:
the eval records, MLflow keys and the report all name the dataset. The sweep is the session's shared one
(conftest.mini_sweep): its other tasks (depth, action) read the synthetic world."""

import json
from pathlib import Path

import pytest
from conftest import MINI, MINI_TASKS

from contracts.spec import load_spec
from reports.collect import collect_mlflow

pytestmark = pytest.mark.slow


def test_mini_sweep_scores_box_tracking_on_got10k_and_reports_the_dataset(mini_sweep):
    tmp_path, run = mini_sweep["root"], mini_sweep["run"]
    assert run.returncode == 0, run.stdout + run.stderr
    paths = sorted((tmp_path / "runs" / MINI).glob("*/evals/*/*.json"))  # the rungs' (not references')
    recs = [json.loads(p.read_text()) for p in paths]
    checkpoints = sum(r.steps // r.checkpoint_interval for r in load_spec(mini_sweep["spec"]).rungs())
    expected = {"box_tracking": "got10k:GOT-10k", "depth": "synthetic", "action": "synthetic"}
    assert sorted(r["dataset"] for r in recs) == sorted(
        expected[t] for t in MINI_TASKS for _ in range(checkpoints)
    ), recs
    assert [r["dataset"] for r in recs] == [expected[Path(p).stem.rsplit("-", 1)[0]] for p in paths], recs
    assert {r["split"] for r in recs if r["dataset"] != "synthetic"} == {
        "dataset splits; val drawn from train by seed 0"
    }
    table = collect_mlflow(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", MINI)
    assert set(table.loc[table["task"] == "box_tracking", "dataset"]) == {"got10k:GOT-10k"}
    assert set(table.loc[table["task"] == "action", "dataset"]) == {"synthetic"}
    rep = mini_sweep["report"]
    assert rep.returncode == 0, rep.stdout + rep.stderr
    fits = json.loads(next((tmp_path / "runs" / MINI / "report").glob("fits.json")).read_text())
    labels = {s["label"] for s in fits["series"]}
    assert "box_tracking/iou (frozen) [got10k:GOT-10k]" in labels and "action/top1 (frozen)" in labels
