"""A mini sweep with reference models end to end on real Ray and MLflow: one tiny transformers video
model and one image model, saved to a temp dir (no network), evaluated beside a one-rung ladder,
logged as child runs, listed by `sweep status`, drawn and tabled by `sweep report`; a rerun does
nothing new."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from contracts.layout import ReferencePaths, read_json
from contracts.names import REFERENCE_ROLE, ROLE_TAG, eval_metric_key
from contracts.spec import load_spec

pytestmark = pytest.mark.slow
SWEEP = [sys.executable, "-m", "orchestrator"]

SPEC = """\
name: refs
data: {frames: 4, resolution: 16, tubelet: [2, 8, 8], world: {objects: 2, points: 8}}
pretraining:
  mask_ratio: 0.5
  decoder: {width: 16, depth: 1, mlp: 32, heads: 2}
  batch_size: 8
  steps: 4
  checkpoint_interval: 4
  cpu_workers: 1
ladder:
  - {name: a, width: 16, depth: 1, mlp: 32, heads: 2}
evals:
  tasks: [depth, action]
  checkpoints: final
  readout: {width: 16, heads: 2, epochs: 1, batch_size: 8, train_clips: 16, val_clips: 8, test_clips: 8}
references:
  - {name: vmae, source: hf, id: MODELS/videomae}
  - {name: dino, source: hf, id: MODELS/dinov2}
"""


def tiny_models(root):
    transformers = pytest.importorskip("transformers")
    small = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2)
    transformers.VideoMAEModel(
        transformers.VideoMAEConfig(
            image_size=16, patch_size=8, num_frames=4, tubelet_size=2, intermediate_size=32, **small
        )
    ).save_pretrained(root / "videomae")
    transformers.Dinov2Model(
        transformers.Dinov2Config(image_size=16, patch_size=8, mlp_ratio=2, **small)
    ).save_pretrained(root / "dinov2")


def test_reference_models_are_evaluated_logged_listed_drawn_and_tabled(tmp_path):
    tiny_models(tmp_path / "models")
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC).replace("MODELS", str(tmp_path / "models")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [*SWEEP, "run", str(spec), "--num-cpus", "2"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stdout + run.stderr

    s = load_spec(spec)
    refs = s.reference_configs()
    for ref in refs:
        for task in ("depth", "action"):
            rec = read_json(ReferencePaths.for_reference(ref, tmp_path / "runs").eval_record(task, "frozen"))
            assert rec["state"] == "done" and rec["logged"] and rec["starts"] == 1, rec
            assert rec["reference"]["num_params"] > 0

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("refs").experiment_id
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
        assert rows[ref.key]["evals_done"] == rows[ref.key]["evals_total"] == 2

    report = subprocess.run(
        [*SWEEP, "report", str(spec), "--bootstrap", "20"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    out = tmp_path / "runs" / "refs" / "report"
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

    again = subprocess.run(
        [*SWEEP, "run", str(spec), "--num-cpus", "2"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert again.returncode == 0, again.stdout + again.stderr
    for ref in refs:
        rec = read_json(ReferencePaths.for_reference(ref, tmp_path / "runs").eval_record("depth", "frozen"))
        assert rec["starts"] == 1  # a rerun does nothing new
