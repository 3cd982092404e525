"""A mini sweep (real Ray, DeepSpeed, MLflow) whose box-tracking evals read a GOT-10k fixture on disk:
the eval records, MLflow keys and the report all name the dataset."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from reports.collect import collect_mlflow

pytestmark = pytest.mark.slow
BOXES = [[30, 10, 20, 15]] * 6


def write_got10k(root):
    """GOT-10k's layout: train/ and val/ sequence folders of 00000001.jpg ..., groundtruth.txt,
    absence.label."""
    for split, n in (("train", 3), ("val", 1)):
        for k in range(n):
            seq = root / split / f"GOT-10k_{split}_{k + 1:06d}"
            seq.mkdir(parents=True)
            for t in range(6):
                Image.fromarray(np.full((40, 80, 3), 30 * t + k, np.uint8)).save(seq / f"{t + 1:08d}.jpg")
            (seq / "groundtruth.txt").write_text("\n".join(",".join(map(str, b)) for b in BOXES) + "\n")
            (seq / "absence.label").write_text("0\n" * 6)


def test_mini_sweep_scores_box_tracking_on_got10k_and_reports_the_dataset(tmp_path):
    write_got10k(tmp_path / "GOT-10k")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        name: real
        data: {{frames: 4, resolution: 16, tubelet: [2, 8, 8], world: {{objects: 2, points: 8}}}}
        pretraining:
          mask_ratio: 0.5
          decoder: {{width: 16, depth: 1, mlp: 32, heads: 2}}
          batch_size: 4
          steps: 4
          checkpoint_interval: 4
          cpu_workers: 1
        ladder:
          - {{name: a, width: 16, depth: 1, mlp: 32, heads: 2}}
          - {{name: b, width: 32, depth: 1, mlp: 64, heads: 2}}
        evals:
          tasks: [box_tracking, action]
          checkpoints: final
          readout: {{width: 16, heads: 2, epochs: 1, batch_size: 4,
                    train_clips: 8, val_clips: 4, test_clips: 4}}
          data:
            box_tracking: {{format: got10k, path: {tmp_path / "GOT-10k"}}}
        """)
    )
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--num-cpus", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs" / "real").glob("*/evals/*/*.json"))]
    assert sorted(r["dataset"] for r in recs) == ["got10k:GOT-10k"] * 2 + ["synthetic"] * 2, recs
    assert {r["split"] for r in recs if r["dataset"] != "synthetic"} == {
        "dataset splits; val drawn from train by seed 0"
    }
    table = collect_mlflow(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "real")
    assert set(table.loc[table["task"] == "box_tracking", "dataset"]) == {"got10k:GOT-10k"}
    assert set(table.loc[table["task"] == "action", "dataset"]) == {"synthetic"}
    rep = subprocess.run(
        [sys.executable, "-m", "orchestrator", "report", str(spec), "--bootstrap", "20"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rep.returncode == 0, rep.stdout + rep.stderr
    fits = json.loads(next((tmp_path / "runs" / "real" / "report").glob("fits.json")).read_text())
    labels = {s["label"] for s in fits["series"]}
    assert "box_tracking/iou (frozen) [got10k:GOT-10k]" in labels and "action/top1 (frozen)" in labels
