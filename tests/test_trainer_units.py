"""The pure pieces of training and scheduling, without Ray: the LR schedule, the DeepSpeed config,
the placement check, which checkpoints are evaluated, the metric sinks after a resume, restart
records, and the one rule for a rung's state in `sweep status` and the live table."""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from contracts.layout import RungPaths, SweepPaths, read_jsonl, write_json
from contracts.spec import SweepSpec, load_spec
from orchestrator.cli import app
from orchestrator.progress import restart_line
from orchestrator.scheduler import RungRun, Sweep, check_schedulable, eval_steps
from orchestrator.status import rung_state
from orchestrator.tracking import Tracker
from orchestrator.training import sinks
from orchestrator.training.engine import deepspeed_config, lr_factor, note_restart, skip_shared_memory_op
from orchestrator.training.sinks import MetricSinks, keep_steps_upto

BASE = {
    "name": "u",
    "data": {"frames": 4, "resolution": 16, "tubelet": [2, 8, 8]},
    "pretraining": {
        "decoder": {"width": 16, "depth": 1, "mlp": 32, "heads": 2},
        "batch_size": 8,
        "steps": 20,
    },
    "ladder": [{"name": "a", "width": 16, "depth": 1, "mlp": 32, "heads": 2}],
}


def spec_with(pretraining: dict | None = None, **sections) -> SweepSpec:
    raw = json.loads(json.dumps(BASE))
    raw["pretraining"].update(pretraining or {})
    raw.update(sections)
    return SweepSpec.model_validate(raw)


def rung_with(pretraining: dict | None = None, **sections):
    return spec_with(pretraining, **sections).rungs()[0]


# ------------------------------------------------------------------ lr_factor


def test_lr_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    rung = rung_with({"steps": 20, "schedule": {"warmup_steps": 4, "min_lr_ratio": 0.1}})
    # Warmup: step s (0-based) runs at (s + 1) / warmup of the base LR.
    assert [lr_factor(s, rung) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # Cosine over the 16 steps after warmup: full LR at its start, halfway down at its middle, the floor
    # at the end.
    assert lr_factor(4, rung) == pytest.approx(1.0)
    assert lr_factor(12, rung) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(8, rung) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.sqrt(0.5)))  # cos(pi/4)
    assert lr_factor(20, rung) == pytest.approx(0.1)
    assert lr_factor(30, rung) == pytest.approx(0.1)  # past the end it stays at the floor


def test_constant_schedule_and_no_warmup():
    constant = rung_with({"schedule": {"kind": "constant", "warmup_steps": 2}})
    assert [lr_factor(s, constant) for s in (0, 1, 2, 19)] == pytest.approx([0.5, 1.0, 1.0, 1.0])
    cosine = rung_with({"steps": 10})
    assert lr_factor(0, cosine) == pytest.approx(1.0) and lr_factor(10, cosine) == pytest.approx(0.0)


# ------------------------------------------------------------------ deepspeed_config


def test_deepspeed_config_accumulates_to_the_global_batch_on_cpu():
    rung = rung_with(
        {
            "batch_size": 32,
            "micro_batch_size": 2,
            "cpu_workers": 4,
            "zero_stage": 2,
            "optimizer": {"grad_clip": 0.5},
        }
    )
    cfg = deepspeed_config(rung, workers=4)
    assert cfg["gradient_accumulation_steps"] == 4  # 32 clips = 2 per micro-batch x 4 workers x 4 micro-steps
    # DeepSpeed refuses a config where these disagree.
    assert (
        cfg["train_batch_size"]
        == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * 4
    )
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": False}  # precision auto is fp32 on CPU
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 2 and zero["overlap_comm"] is False
    assert zero["stage3_param_persistence_threshold"] == 0  # every parameter partitioned on CPU


def test_cpu_workers_skip_deepspeeds_shared_memory_op():
    """DeepSpeed's CPU backend builds this op (a minute of compiling) only for inference all-reduce."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.comm.torch import build_shm_op

    assert get_accelerator().create_op_builder("ShareMemCommBuilder").NAME == "deepspeed_shm_comm"
    skip_shared_memory_op()
    assert build_shm_op() is None  # not built, not loaded (it returns the loaded module otherwise)


def test_deepspeed_config_on_gpus_is_bf16_and_overlaps_communication():
    rung = rung_with({"batch_size": 16, "gpus": 2})
    cfg = deepspeed_config(rung, workers=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 8 and cfg["gradient_accumulation_steps"] == 1
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["zero_optimization"]["overlap_comm"] is True
    assert cfg["zero_optimization"]["stage3_param_persistence_threshold"] > 0


# ------------------------------------------------------------------ check_schedulable


def test_workers_must_fit_on_single_nodes_not_just_in_total():
    spec = spec_with({"cpu_workers": 3, "cpus_per_worker": 2}, evals={"tasks": []})
    # 6 CPUs in total, but a 3-CPU node holds one 2-CPU worker: two of three fit.
    problems = check_schedulable(spec, spec.rungs(), [{"CPU": 3}, {"CPU": 3}])
    assert len(problems) == 1 and "rung a needs 3 workers" in problems[0], problems
    assert check_schedulable(spec, spec.rungs(), [{"CPU": 4}, {"CPU": 2}]) == []  # 2 + 1 workers


def test_gpu_rungs_need_a_gpu_per_worker_and_evals_one_node():
    spec = spec_with({"gpus": 2}, evals={"tasks": ["depth"], "cpus": 4, "gpus": 1})
    two_gpu_nodes = [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}]
    assert check_schedulable(spec, spec.rungs(), two_gpu_nodes) == []
    problems = check_schedulable(spec, spec.rungs(), [{"CPU": 8, "GPU": 1}, {"CPU": 2}])
    assert [p.split(" needs")[0] for p in problems] == ["rung a"]
    small = [{"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}]  # the eval's 4 CPUs fit on no one node
    assert [p.split(" needs")[0] for p in check_schedulable(spec, spec.rungs(), small)] == ["an eval"]


def test_a_fixed_cluster_starts_only_the_rungs_it_can_place_at_once():
    """The rest wait in the driver, not as Ray Train controllers polling for a placement group."""
    from orchestrator.policy import rungs_at_once

    ladder = [{"name": n, "width": 16, "depth": 1, "mlp": 32, "heads": 2} for n in "abcde"]
    spec = spec_with({"cpu_workers": 2}, ladder=ladder)
    assert rungs_at_once(spec, spec.rungs(), [{"CPU": 2}]) == 1  # the local ladder: 2 cores, 2 workers
    assert rungs_at_once(spec, spec.rungs(), [{"CPU": 2}, {"CPU": 2}]) == 2  # a worker per node each
    assert rungs_at_once(spec, spec.rungs(), [{"CPU": 3}]) == 1  # a second rung's 2 workers do not fit
    assert rungs_at_once(spec, spec.rungs(), [{"CPU": 64}]) == 5  # never more than the ladder
    gpus = spec_with({"gpus": 2}, ladder=ladder)
    assert rungs_at_once(gpus, gpus.rungs(), [{"CPU": 64, "GPU": 8}]) == 4  # GPUs, not CPUs, bound it
    # Rungs of different sizes: bounded by the smallest, so no rung ever waits for a place it could have.
    mixed = spec_with({"gpus": 1}, ladder=[{**ladder[0], "gpus": 4}, *ladder[1:3]])
    assert rungs_at_once(mixed, mixed.rungs(), [{"CPU": 64, "GPU": 8}]) == 3
    assert rungs_at_once(mixed, mixed.rungs(), [{"CPU": 64, "GPU": 2}]) == 2
    scaling = spec_with({"cpu_workers": 2}, ladder=ladder, cluster={"autoscaling": True})
    assert rungs_at_once(scaling, scaling.rungs(), [{"CPU": 2}]) == 5  # demand is what makes it grow


def test_autoscaling_cluster_accepts_what_does_not_fit_yet():
    spec = spec_with({"gpus": 8}, cluster={"autoscaling": True})
    assert check_schedulable(spec, spec.rungs(), [{"CPU": 1}]) == []


# ------------------------------------------------------------------ eval_steps


@pytest.mark.parametrize(
    "which, expected", [("all", [4, 8, 12]), ("final", [12]), ([4, 12], [4, 12]), ([4, 6], [4])]
)
def test_eval_steps_picks_sealed_checkpoints(which, expected):
    spec = spec_with({"steps": 12, "checkpoint_interval": 4}, evals={"checkpoints": which})
    assert eval_steps(spec, spec.rungs()[0], [4, 8, 12]) == expected


def test_eval_steps_of_a_partly_trained_rung():
    spec = spec_with({"steps": 12, "checkpoint_interval": 4}, evals={"checkpoints": "final"})
    assert eval_steps(spec, spec.rungs()[0], [4, 8]) == []  # the final checkpoint is not sealed yet


# ------------------------------------------------------------------ metric sinks after a resume


class LocalRunLog:
    """orchestrator.training.sinks.RunLog's three methods on a Tracker in this process, not a Ray actor."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def log_metrics(self, metrics, step):
        self.tracker.log_metrics(self.run_id, metrics, step)

    def set_tags(self, tags):
        self.tracker.set_tags(self.run_id, tags)

    def last_steps(self):
        return self.tracker.last_steps(self.run_id)


def loss_at(step: int) -> float:
    return 1.0 / step


def test_sinks_keep_one_value_per_step_after_a_resume(tmp_path):
    paths = RungPaths(tmp_path / "runs" / "u" / "a-000000")
    paths.root.mkdir(parents=True)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.client.create_run(tracker.experiment_id("u")).info.run_id
    log = LocalRunLog(tracker, run_id)
    cpu = torch.device("cpu")

    # The first worker group trains steps 1..5, then dies; its last checkpoint was step 3.
    first = MetricSinks.open(paths, 6, cpu, log, resumed_from=0)
    for step in range(1, 6):
        first.log(step, {"train/loss": loss_at(step), "train/clips_per_s": 10.0 + step}, loss_at(step))
    # The restarted group resumes from step 3 and trains 4..6 again (the same losses, other timings).
    second = MetricSinks.open(paths, 6, cpu, log, resumed_from=3)
    assert [r["step"] for r in read_jsonl(paths.metrics)] == [
        1,
        2,
        3,
    ]  # the steps past the checkpoint dropped
    for step in range(4, 7):
        second.log(step, {"train/loss": loss_at(step), "train/clips_per_s": 100.0 + step}, loss_at(step))
    tracker.flush()

    lines = read_jsonl(paths.metrics)
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert [r["train/loss"] for r in lines] == [loss_at(s) for s in range(1, 7)]
    history = tracker.client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # each step once
    assert {m.step: m.value for m in history} == {s: loss_at(s) for s in range(1, 7)}
    # MLflow kept what it had first (the steps it already held were not sent again).
    timings = {m.step: m.value for m in tracker.client.get_metric_history(run_id, "train/clips_per_s")}
    assert timings == {1: 11.0, 2: 12.0, 3: 13.0, 4: 14.0, 5: 15.0, 6: 106.0}
    for key in tracker.client.get_run(run_id).data.metrics:  # system metrics too
        steps = [m.step for m in tracker.client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), key
    assert json.loads(paths.progress.read_text())["step"] == 6


def test_keep_steps_upto_copies_kept_lines_and_drops_a_torn_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    kept = '{"step": 1, "train/loss": 0.30000000000000004}\n{"step": 2, "x": 1}\n'
    path.write_text(kept + '{"step": 3, "x": 2}\n{"step": 4, "x"')
    keep_steps_upto(path, 2)
    assert path.read_text() == kept
    keep_steps_upto(tmp_path / "absent.jsonl", 2)  # nothing to drop
    assert not (tmp_path / "absent.jsonl").exists()


# ------------------------------------------------------------------ restart records


def test_a_second_worker_group_of_the_same_fit_is_a_restart(tmp_path):
    paths = RungPaths(tmp_path / "a-000000")
    paths.root.mkdir()
    assert note_restart(paths, "fit-1", 0, 2) is None  # no earlier group at all
    write_json(paths.resume, {"step": 0, "launch": "fit-1", "attempt": 0})
    write_json(paths.progress, {"step": 6})
    rec = note_restart(paths, "fit-1", 4, 2)
    assert {k: rec[k] for k in ("attempt", "max_failures", "died_at_step", "resumed_from")} == {
        "attempt": 1,
        "max_failures": 2,
        "died_at_step": 6,
        "resumed_from": 4,
    }
    assert note_restart(paths, "fit-2", 4, 2) is None  # a new `sweep run` resuming is not a restart
    assert read_jsonl(paths.restarts) == [rec]


def test_restart_line_reads_as_a_sentence():
    rec = {"attempt": 1, "max_failures": 2, "died_at_step": 96, "resumed_from": 80}
    assert (
        restart_line("micro3", rec)
        == "[micro3] worker died at step 96; restarted from checkpoint 80 (attempt 1 of 2)"
    )
    early = restart_line("micro3", {**rec, "resumed_from": 0, "died_at_step": 5})
    assert "restarted from the first step" in early and "checkpoint 0" not in early


# ------------------------------------------------------------------ a rung's state


@pytest.mark.parametrize(
    "status, rank0_time, trained, alive, expected",
    [
        ({}, None, False, True, "pending"),
        ({"state": "running", "submitted": 100.0}, None, False, True, "queued"),  # no worker yet
        ({"state": "running", "submitted": 100.0}, 50.0, False, True, "queued"),  # a worker of an earlier run
        ({"state": "running", "submitted": 100.0}, 101.0, False, True, "running"),
        ({"state": "running", "submitted": 100.0}, 101.0, False, False, "interrupted"),
        ({"state": "running", "submitted": 100.0}, 101.0, True, True, "done"),
        ({"state": "failed"}, 101.0, True, True, "failed"),
        ({"state": "pending"}, None, True, False, "done"),
    ],
)
def test_rung_state(status, rank0_time, trained, alive, expected):
    rank0 = {} if rank0_time is None else {"time": rank0_time}
    assert rung_state(status, rank0, trained=trained, driver_alive=alive) == expected


STATUS_SPEC = """\
name: st
data: {frames: 4, resolution: 16, tubelet: [2, 8, 8]}
pretraining: {batch_size: 8, steps: 16, checkpoint_interval: 8, \
decoder: {width: 16, depth: 1, mlp: 32, heads: 2}}
ladder:
  - {name: a, width: 16, depth: 1, mlp: 32, heads: 2}
evals: {tasks: [depth], checkpoints: final}
"""


@pytest.fixture
def live_driver(tmp_path):
    """A sweep dir whose lock a live process holds (SweepLock ignores this process's own pid)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(textwrap.dedent(STATUS_SPEC))
    spec = load_spec(spec_path)
    runs = tmp_path / "runs"
    write_json(
        SweepPaths.of(runs, spec.name).lock,
        {"pid": proc.pid, "host": socket.gethostname(), "heartbeat": time.time()},
    )
    yield spec_path, spec, runs
    proc.kill()
    proc.wait()


def status_json(spec_path: Path, runs: Path) -> list[dict]:
    result = CliRunner().invoke(app, ["status", str(spec_path), "--runs-dir", str(runs), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def snapshot_state(spec: SweepSpec, spec_path: Path, runs: Path) -> str:
    """What the driver's live table says for the same records."""
    sweep = Sweep(spec, spec_path, spec.rungs(), runs)
    rung = spec.rungs()[0]
    sweep.runs[rung.key] = RungRun(rung, "run-id")
    return sweep.snapshot()[0]["state"]


def test_status_json_reads_queued_until_the_rank0_worker_starts(live_driver):
    spec_path, spec, runs = live_driver
    paths = RungPaths.for_rung(spec.rungs()[0], runs)
    submitted = time.time()
    write_json(paths.status, {"state": "running", "submitted": submitted, "steps": 16})
    write_json(paths.worker(0), {"rank": 0, "time": submitted - 60})  # left by an earlier run
    write_json(paths.progress, {"step": 5, "total": 16, "clips_per_s": 4.0, "time": submitted - 60})
    paths.restarts.write_text(
        json.dumps({"attempt": 1, "max_failures": 2, "died_at_step": 5, "resumed_from": 0}) + "\n"
    )

    [row] = status_json(spec_path, runs)
    assert row == {
        "kind": "rung",  # `sweep status --json` lists reference models too (issue 25), as kind "reference"
        "rung": paths.key,
        "state": "queued",
        "step": 5,
        "total": 16,
        "last_checkpoint": None,
        "evals_done": 0,
        "evals_total": 1,
        "restarts": 1,
        "failures": [],
        "eta_s": None,
    }
    assert snapshot_state(spec, spec_path, runs) == "queued"

    write_json(paths.worker(0), {"rank": 0, "time": submitted + 1})
    write_json(paths.progress, {"step": 6, "total": 16, "clips_per_s": 4.0, "time": time.time()})
    [row] = status_json(spec_path, runs)
    assert row["state"] == "running" and row["step"] == 6
    assert row["eta_s"] == pytest.approx((16 - 6) * 8 / 4.0)  # steps left x clips per step / clips per second
    assert snapshot_state(spec, spec_path, runs) == "running"


def test_records_on_a_store_go_up_in_the_background_and_whole_on_flush(tmp_path, monkeypatch):
    """Rank 0's per-step records on a store: not one PUT a step, but everything on flush()."""
    monkeypatch.setattr("orchestrator.training.sinks.RECORDS_EVERY_S", 60.0)
    puts = []
    real = sinks.write_text
    monkeypatch.setattr("orchestrator.training.sinks.write_text", lambda p, t: (puts.append(p), real(p, t)))
    record = tmp_path / "metrics.jsonl"
    uploads = sinks.RecordUploads()
    uploads.start(record, '{"step": 1}\n')
    uploads.append(record, '{"step": 2}\n')
    uploads.flush()
    assert record.read_text() == '{"step": 1}\n{"step": 2}\n' and len(puts) == 1
    for step in range(3, 103):  # a hundred steps inside one upload interval
        uploads.append(record, json.dumps({"step": step}) + "\n")
        uploads.replace(tmp_path / "progress.json", json.dumps({"step": step}))
    time.sleep(0.3)
    assert len(puts) == 1  # nothing put on the steps
    uploads.flush()
    assert [r["step"] for r in read_jsonl(record)] == list(range(1, 103))
    assert json.loads((tmp_path / "progress.json").read_text()) == {"step": 102}
    assert len(puts) == 3  # both records, once each


def test_a_record_that_cannot_be_put_fails_the_flush(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    uploads = sinks.RecordUploads()
    uploads.append(tmp_path / "file" / "metrics.jsonl", '{"step": 1}\n')
    with pytest.raises(RuntimeError, match="a run record was not stored"):
        uploads.flush()


def test_workers_import_deepspeed_without_its_optional_mlflow_and_mlflow_still_imports_after():
    code = (
        "import sys\n"
        "from orchestrator.pretrain import import_deepspeed_without_mlflow\n"
        "import_deepspeed_without_mlflow()\n"
        "import deepspeed.autotuning.autotuner as autotuner\n"
        "assert 'deepspeed' in sys.modules and not autotuner.has_mlflow\n"
        "assert 'mlflow' not in sys.modules\n"
        "import mlflow\n"
        "print('ok', mlflow.__name__)\n"
    )
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == "ok mlflow", run.stdout + run.stderr
