"""Disk is the record, MLflow a reconciled view (orchestrator.reconcile), without Ray: a rung whose
MLflow run lost points (a driver SIGKILLed with the tracker's buffer, a killed tracker) is made to
hold exactly its disk record, and nothing is ever logged twice."""

import json
import time

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from contracts.layout import RungPaths, SweepPaths, write_json
from contracts.names import RESTARTS_METRIC
from orchestrator.cli import app
from orchestrator.reconcile import disk_points, reconcile_runs, repair_line, sync_sweep
from orchestrator.tracking import Tracker

TRAIN_KEYS = (
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "train/clips_per_s",
    "train/tokens_per_s",
    "train/tflops",
)


def write_rung(paths: RungPaths, steps: int, checkpoints: list[int]) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.metrics, "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, **{k: 1.0 / s + i for i, k in enumerate(TRAIN_KEYS)}}) + "\n")
        f.write('{"step": 99999, "train/lo')  # a torn last line (a killed writer) is not a point
    with open(paths.system, "w") as f:
        for s in range(10, steps + 1, 10):
            f.write(json.dumps({"step": s, "system/cpu_utilization_percentage": 50.0 + s}) + "\n")
    with open(paths.restarts, "w") as f:
        f.write(json.dumps({"attempt": 1, "died_at_step": 7, "resumed_from": 4}) + "\n")
    for step in checkpoints:
        for task in ("depth", "action"):
            write_json(
                paths.eval_record(step, task, "frozen"),
                {
                    "state": "done",
                    "attempts": 1,
                    "logged": True,
                    "metrics": {"top1": step / 100, "baseline_top1": 0.1},
                },
            )
    write_json(paths.eval_record(checkpoints[-1] + 8, "depth", "frozen"), {"state": "running", "attempts": 1})


def history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
        for k in client.get_run(run_id).data.metrics
    }


def as_history(points) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted(v.items()) for k, v in points.items()}


def test_reconcile_restores_what_mlflow_lacks_and_never_duplicates(tmp_path):
    paths = RungPaths(tmp_path / "runs" / "u" / "m1-000000")
    write_rung(paths, 40, [8, 16, 24])
    points = disk_points(paths)
    assert sorted(points["train/loss"]) == list(range(1, 41))  # the torn line is not there
    assert points[RESTARTS_METRIC] == {7: 1.0}
    assert set(points["eval/depth/top1"]) == {8, 16, 24}  # the running eval has no result yet

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.client.create_run(tracker.experiment_id("u")).info.run_id
    # What reached MLflow before the crash: steps 1..3 and one eval metric; the rest died in a buffer.
    for s in range(1, 4):
        tracker.log_metrics(run_id, {k: points[k][s] for k in TRAIN_KEYS}, s)
    tracker.log_metrics_now(run_id, {"eval/depth/top1": 0.08}, 8)
    tracker.log_metrics_now(run_id, {"eval/depth/top1": 0.08}, 8)  # a retried call: not a second point

    lines = []
    restored = reconcile_runs({"m1": (paths, run_id)}, tracker.reconcile, lines.append)["m1"]
    assert lines[0] == "[m1] restored 11 eval metrics, 37 training steps and 4 system samples to MLflow"
    assert lines[1].startswith("reconciled 1 rung(s) with MLflow in ")
    assert sorted(restored["train/loss"]) == list(range(4, 41))
    assert history(tracker.client, run_id) == as_history(points)  # exactly the disk record

    # Idempotent: a second pass, a fresh tracker (a restarted actor) and a replayed step add nothing.
    again = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert again.reconcile(run_id, points) == {}
    again.log_metrics(run_id, {"train/loss": 123.0}, 5)
    again.flush()
    assert history(tracker.client, run_id) == as_history(points)
    assert again.last_steps(run_id)["train/loss"] == 40


def test_repair_line_names_what_was_restored():
    assert repair_line("m1", {}) is None
    assert (
        repair_line(
            "m1",
            {
                "eval/depth/abs_rel": [30, 60],
                "eval/action/top1": [30, 60, 90],
                "train/loss": list(range(1, 38)),
                "train/lr": list(range(1, 38)),
            },
        )
        == "[m1] restored 5 eval metrics and 37 training steps to MLflow"
    )


def test_sweep_sync_repairs_every_rung_and_respects_a_live_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    (tmp_path / "runs").mkdir()
    tracker = Tracker(uri)
    exp = tracker.experiment_id("u")
    sweep = SweepPaths.of(tmp_path / "runs", "u")
    write_json(sweep.sweep_json, {"tracking_uri": uri})
    run_ids = {}
    for name in ("a-000000", "b-000000"):
        paths = sweep.rung(name)
        write_rung(paths, 20, [8, 16])
        run_ids[name] = tracker.client.create_run(exp).info.run_id
        write_json(paths.info, {"mlflow_run_id": run_ids[name]})
    (tmp_path / "spec.yaml").write_text(
        "name: u\npretraining: {steps: 20}\nladder:\n  - {name: a, width: 16, depth: 1, mlp: 32, heads: 2}\n"
    )

    result = CliRunner().invoke(app, ["sync", "spec.yaml"])
    assert result.exit_code == 0, result.output
    assert (
        "[a-000000] restored 8 eval metrics, 20 training steps and 2 system samples to MLflow"
        in result.output
    )
    assert "[b-000000] restored" in result.output
    for name, run_id in run_ids.items():
        assert history(tracker.client, run_id) == as_history(disk_points(sweep.rung(name)))
    again = CliRunner().invoke(app, ["sync", "spec.yaml"])
    assert "nothing missing" in again.output and "restored" not in again.output

    # While a driver holds the sweep it is the one writer: sync leaves MLflow alone.
    write_json(sweep.lock, {"pid": 1, "host": __import__("socket").gethostname(), "heartbeat": time.time()})
    said = []
    assert sync_sweep(sweep.root, say=said.append) is None and "is running" in said[0]
