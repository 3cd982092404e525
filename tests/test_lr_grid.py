"""An LR grid as a sweep axis, for real: each grid point is a rung (own hash, directory, MLflow run),
trained and evaluated like any rung; a rerun does nothing new; `sweep report` ranks the grid.

The grid is the spec's smallest (2 LRs): each Ray Train fit costs ~20 s of start-up on a 2-core
machine, so 5 fits instead of 7 is most of this test's time. The rungs train one at a time
(max_concurrent=1), each beside the previous rung's eval: with all of them submitted at once, four fits
started their ~6 processes each together and took 122 s to reach their first step, and the test took
177 s; one at a time a rung is ~22 s from the last one's end to its own, and the test 138 s. Where an
optimum lies inside a 3-point grid (the parabola, the law, the warnings) is tested on tables in
test_transfer.py; 6 steps of training could not place it reliably here anyway."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from contracts.layout import RungPaths
from contracts.names import ROLE_TAG, SEARCH_TAG
from contracts.spec import load_spec
from orchestrator.cli import app
from orchestrator.scheduler import open_sweep

pytestmark = [pytest.mark.slow, pytest.mark.minutes]

SPEC = """\
name: grid
data: {frames: 4, resolution: 16, tubelet: [2, 8, 8], world: {objects: 2, points: 8}}
pretraining:
  mask_ratio: 0.5
  decoder: {width: 16, depth: 1, mlp: 32, heads: 2}
  schedule: {warmup_steps: 2}
  batch_size: 4
  steps: 6
  checkpoint_interval: 6
  cpu_workers: 1
  val_clips: 0
ladder:
  - {name: a, width: 16, depth: 1, mlp: 32, heads: 2}
  - {name: b, width: 32, depth: 1, mlp: 64, heads: 2}
  - {name: c, width: 64, depth: 1, mlp: 128, heads: 4}
evals:
  tasks: [depth]
  checkpoints: final
  readout: {width: 16, heads: 2, epochs: 1, batch_size: 8, train_clips: 8, val_clips: 8, test_clips: 8}
search: {lr: [1.0e-3, 1.0e-2], rungs: [a, b], metric: depth/abs_rel}
"""


def test_a_two_point_grid_on_two_rungs_runs_reruns_and_is_reported(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("grid.yaml").write_text(textwrap.dedent(SPEC))
    spec = load_spec("grid.yaml")
    names = [r.name for r in spec.rungs()]
    assert names == ["a-lr1e-3", "a-lr1e-2", "b-lr1e-3", "b-lr1e-2", "c"]
    assert len({r.key for r in spec.rungs()}) == 5

    assert open_sweep(Path("grid.yaml"), Path("runs"), max_concurrent=1).run(None) == 0
    dirs = [RungPaths.for_rung(r, Path("runs")) for r in spec.rungs()]
    assert all(p.eval_record(6, "depth", "frozen").exists() for p in dirs)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("grid")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'rung'")
    assert sorted(r.info.run_name for r in runs) == sorted(r.run_name for r in spec.rungs())
    assert {r.data.tags.get(SEARCH_TAG) for r in runs} == {"a", "b", None}

    # A rerun finds everything done: no new checkpoint, no eval run again.
    before = {
        str(p): p.stat().st_mtime_ns
        for d in dirs
        for p in d.root.rglob("*")
        if p.is_file() and ("checkpoints" in p.parts or "evals" in p.parts)
    }
    t0 = time.time()
    assert open_sweep(Path("grid.yaml"), Path("runs"), max_concurrent=1).run(None) == 0
    after = {
        str(p): p.stat().st_mtime_ns
        for d in dirs
        for p in d.root.rglob("*")
        if p.is_file() and ("checkpoints" in p.parts or "evals" in p.parts)
    }
    assert after == before, "the rerun wrote checkpoints or evals"
    rerun_s = time.time() - t0

    result = CliRunner().invoke(app, ["report", "grid.yaml", "--fit", "powerlaw", "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "LR search, best point per size by depth/abs_rel" in out
    assert "  a (" in out and "  b (" in out and "optimal LR ~ N^" in out and "suggested LR for c" in out
    md = (Path("runs") / "grid" / "report" / "report.md").read_text()
    assert "## Learning-rate search" in md
    print(f"rerun took {rerun_s:.1f} s; pid {os.getpid()}")
