"""`sweep simulate`: the simulator's laws, its bad-input lines, and the one policy it shares with
the Ray driver. Pure and fast: no Ray."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts.layout import RungPaths, write_json
from contracts.spec import SweepSpec
from orchestrator import policy
from orchestrator.cli import app
from orchestrator.policy import EvalKey
from orchestrator.scheduler import RungRun, Sweep
from orchestrator.simulate.cluster import gpu_cluster, local_cluster
from orchestrator.simulate.costs import RungCost
from orchestrator.simulate.engine import Durations, Engine
from orchestrator.simulate.recommend import young_daly
from orchestrator.simulate.run import (
    LLAMA3_PER_GPU_HOUR,
    analytic_durations,
    prepare,
    run_seeds,
    simulate_once,
)

ROOT = Path(__file__).resolve().parents[1]
SIZE_LADDER = ROOT / "sweeps" / "size_ladder.yaml"

BASE = {
    "name": "sim",
    "data": {"frames": 4, "resolution": 16, "tubelet": [2, 8, 8]},
    "pretraining": {
        "decoder": {"width": 16, "depth": 1, "mlp": 32, "heads": 2},
        "batch_size": 8,
        "steps": 100,
        "checkpoint_interval": 30,
        "gpus": 8,
    },
    "ladder": [{"name": "a", "width": 16, "depth": 1, "mlp": 32, "heads": 2}],
    "evals": {"tasks": [], "gpus": 1},
}


def spec_with(pretraining: dict | None = None, **sections) -> SweepSpec:
    raw = json.loads(json.dumps(BASE))
    raw["pretraining"].update(pretraining or {})
    raw.update(sections)
    return SweepSpec.model_validate(raw)


def cost(step_s=0.5, save_s=10.0, startup_s=90.0, final_extra_s=3.0) -> RungCost:
    return RungCost(startup_s, step_s, step_s, 0.0, save_s, final_extra_s, save_s)


# ------------------------------------------------------------------ laws


def test_one_rung_without_failures_takes_exactly_the_analytic_sum():
    spec = spec_with()
    [rung] = spec.rungs()
    durations = Durations({rung.key: cost()}, {}, overhead_s=7.0)
    result = Engine(spec, [rung], gpu_cluster(64, 8, "H100"), durations).run()
    # checkpoints at 30, 60, 90 and the final 100: 7 + 90 + 100 x 0.5 + 4 x 10 + 3
    assert result.makespan_s == 7 + 90 + 50 + 40 + 3
    assert result.lost_h == 0 and result.interruptions == {rung.key: 0}


def test_evals_of_the_final_checkpoint_run_side_by_side_after_it():
    spec = spec_with(evals={"tasks": ["depth", "action"], "checkpoints": "final", "gpus": 1})
    [rung] = spec.rungs()
    evals = {(rung.key, "depth", "frozen"): 40.0, (rung.key, "action", "frozen"): 25.0}
    result = Engine(spec, [rung], gpu_cluster(2, 8, "H100"), Durations({rung.key: cost()}, evals)).run()
    assert result.makespan_s == 90 + 50 + 40 + 3 + 40
    assert result.eval_lag_s == 40


@pytest.mark.parametrize("rate", [0.0, 2e-3])
def test_useful_lost_and_idle_gpu_hours_add_up_to_gpus_times_makespan(rate):
    setup = prepare(SIZE_LADDER, "128x8xH100", str(rate))
    for r in run_seeds(setup, 3, record_first=False):
        assert math.isclose(r.useful_h + r.lost_h + r.idle_h, r.units * r.makespan_s / 3600, rel_tol=1e-9)
        assert r.useful_h > 0 and r.idle_h >= 0 and (r.lost_h > 0) == (sum(r.interruptions.values()) > 0)


def test_the_checkpoint_interval_that_loses_least_is_young_dalys():
    spec = spec_with({"steps": 200_000, "max_failures": 10**9})
    rung = spec.rungs()[0]
    save_s, mtbf_s = 20.0, 3600.0  # 8 GPUs at 1/8 failure per GPU-hour: one an hour
    cluster = gpu_cluster(1, 8, "H100").with_(restart_delay_s=0.0)
    tau = young_daly(save_s, mtbf_s)  # 379 s
    spans = {}
    for factor in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5):
        every = round(factor * tau)  # steps of 1 s
        r = replace(rung, checkpoint_interval=every)
        durations = Durations({r.key: cost(step_s=1.0, save_s=save_s, startup_s=0.0, final_extra_s=0.0)}, {})
        runs = [
            Engine(spec, [r], cluster, durations, failures_per_gpu_hour=1 / 8, seed=s, train_only=True).run()
            for s in range(12)
        ]
        spans[every] = sum(x.makespan_s for x in runs)
    best = min(spans, key=spans.get)
    assert abs(best / tau - 1) <= 0.25, (best, tau, spans)


def test_the_same_seed_gives_the_same_result_and_another_seed_another():
    setup = prepare(SIZE_LADDER, "128x8xH100", "2e-3")

    def outcome(seed):
        result = simulate_once(setup, seed, record=True)
        return {k: v for k, v in asdict(result).items() if k != "decide_s"}

    first = outcome(0)
    assert first["failures"] and outcome(0) == first
    assert outcome(1)["failures"] != first["failures"]


def test_llama3_rate_is_one_unexpected_interruption_every_three_hours_on_16k_gpus():
    assert 2.5 < 1 / (LLAMA3_PER_GPU_HOUR * 16384) < 3.5


def test_local_cluster_is_this_machine_with_two_cpus():
    c = local_cluster()
    assert (c.nodes, c.gpus_per_node, c.cores_per_node) == (1, 0, 2)
    spec = spec_with({"gpus": 0, "cpu_workers": 2})
    rungs = spec.rungs()
    result = Engine(spec, rungs, c, analytic_durations(spec, rungs, c, prepare_assume())).run()
    assert result.units == 2 and result.makespan_s > 0


def prepare_assume():
    from orchestrator.simulate.costs import Assumptions

    return Assumptions()


# ------------------------------------------------------------------ one policy, two executors


def test_driver_and_simulator_take_the_same_actions_from_one_state(tmp_path):
    spec = spec_with(
        {"gpus": 0, "cpu_workers": 1, "steps": 4, "checkpoint_interval": 2},
        ladder=[
            {"name": n, "width": w, "depth": 1, "mlp": 32, "heads": 2}
            for n, w in zip("abc", (16, 24, 32), strict=True)
        ],
        evals={"tasks": ["depth", "action"], "checkpoints": "all"},
    )
    a, b, c = rungs = spec.rungs()
    states = {a.key: "done", b.key: "running", c.key: "pending"}
    sealed = {a.key: [2, 4], b.key: [2], c.key: []}
    records = {(a.key, 2, "depth"): "done", (a.key, 2, "action"): "failed", (a.key, 4, "depth"): "retry"}
    in_flight = {EvalKey(a.key, 4, "action", "frozen")}

    # The driver: the state on disk and in its runs, read by its own observe step.
    runs = tmp_path / "runs"
    for r in rungs:
        for step in sealed[r.key]:
            ckpt_dir = RungPaths.for_rung(r, runs).checkpoint(step)
            ckpt_dir.mkdir(parents=True)
            (ckpt_dir / "manifest.json").write_text(json.dumps({"step": step, "files": {}}))
    for (key, step, task), state in records.items():
        rung = next(r for r in rungs if r.key == key)
        write_json(
            RungPaths.for_rung(rung, runs).eval_record(step, task, "frozen"), {"state": state, "logged": True}
        )
    sweep = Sweep(spec, tmp_path / "spec.yaml", rungs, runs, max_concurrent=2)
    for r in rungs:
        sweep.runs[r.key] = RungRun(r, "run", state=states[r.key])
    for key in in_flight:
        sweep.jobs[key] = type("Job", (), {"ref": object()})()
    driver_state, _ = sweep._observe()
    driver = policy.decide(driver_state)

    # The simulator: the same state in its engine.
    engine = Engine(
        spec, rungs, local_cluster(), Durations({r.key: cost() for r in rungs}, {}), max_concurrent=2
    )
    for rs in engine.state.rungs:
        rs.state, rs.sealed = states[rs.key], list(sealed[rs.key])
    engine.state.evals = {EvalKey(k, s, t, "frozen"): v for (k, s, t), v in records.items()}
    engine.state.in_flight = set(in_flight)
    simulator = engine.next_actions()

    assert driver == simulator
    assert driver.start_rungs == [c.key]  # one rung runs, two may
    assert driver.submit_evals == [
        EvalKey(a.key, 4, "depth", "frozen"),  # a retry
        EvalKey(b.key, 2, "depth", "frozen"),
        EvalKey(b.key, 2, "action", "frozen"),
    ]
    assert not driver.finished


# ------------------------------------------------------------------ bad input: one line, exit 2


@pytest.mark.parametrize(
    "args, says",
    [
        (["--cluster", "16x8xZ100"], "unknown GPU kind 'Z100'"),
        (["--cluster", "4x8xH100"], "too small"),
        (["--cluster", "128x8xH100", "--failures", "often"], "--failures 'often'"),
    ],
)
def test_bad_cluster_or_rate_is_one_line_and_exit_2(args, says):
    result = CliRunner().invoke(app, ["simulate", str(SIZE_LADDER), *args])
    assert result.exit_code == 2, result.output
    assert says in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_malformed_calibration_directory_is_one_line_and_exit_2(tmp_path):
    spec = ROOT / "sweeps" / "local_ladder.yaml"
    empty = tmp_path / "empty"
    empty.mkdir()
    half = tmp_path / "half" / "local_ladder"
    (half / "micro1-000000").mkdir(parents=True)
    (half / "sweep.json").write_text("{}")
    (half / "micro1-000000" / "info.json").write_text("{}")
    for target, says in [(empty, "no sweep.json"), (half, "no finished rung")]:
        result = CliRunner().invoke(
            app, ["simulate", str(spec), "--cluster", "local", "--calibrate", str(target)]
        )
        assert result.exit_code == 2, result.output
        assert says in result.output and len(result.output.strip().splitlines()) == 1, result.output


# ------------------------------------------------------------------ calibration


# The driver's start before its first submission: the process's start (7 s) + 10 s from sweep.json's
# driver_started (990) to the submission (1000); after a rerun, driver_started (2000) is the rerun's,
# later than the submission, and the measured default driver start (25 s) stands in for it.
@pytest.mark.parametrize(("driver_started", "start_s"), [(990.0, 17.0), (2000.0, 25.0)])
def test_a_calibrated_simulation_of_a_serial_run_reproduces_its_wall_time(tmp_path, driver_started, start_s):
    """A made-up finished run on the 2-CPU machine: each duration the records give is read back,
    and the simulated sweep ends when the real one did."""
    spec = spec_with(
        {"gpus": 0, "cpu_workers": 2, "steps": 100, "checkpoint_interval": 50},
        evals={"tasks": ["depth", "action"], "checkpoints": "final", "cpus": 1},
    )
    [rung] = spec.rungs()
    runs = tmp_path / "runs"
    paths = RungPaths.for_rung(rung, runs)
    write_json(runs / "sim" / "sweep.json", {"driver_started": driver_started, "started": 995.0})
    write_json(paths.info, {"key": rung.key, "config": {"batch_size": 8}})
    # Submitted at 1000, rank 0 up at 1030 (start-up 30 s), 100 steps of 0.5 s (16 clips/s at
    # batch 8) and two 5 s saves to 1090, done at 1092.
    write_json(paths.status, {"state": "done", "submitted": 1000.0, "train_s": 92.0})
    write_json(paths.worker(0), {"rank": 0, "time": 1030.0})
    write_json(paths.progress, {"step": 100, "time": 1090.0})
    paths.root.joinpath("metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train/clips_per_s": 16.0}) + "\n" for s in range(1, 101))
    )
    for step in (50, 100):
        paths.checkpoint(step).mkdir(parents=True)
        (paths.checkpoint(step) / "manifest.json").write_text("{}")
    # Both evals start 3 s after the rung ends, side by side on the two CPUs.
    for task, seconds in (("depth", 20.0), ("action", 30.0)):
        rec = {"state": "done", "seconds": seconds, "started": 1095.0, "ended": 1095.0 + seconds}
        write_json(paths.eval_record(100, task, "frozen"), rec)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(json.dumps(spec.model_dump(mode="json")))

    setup = prepare(spec_path, "local", calibrate=str(runs / "sim"))
    c = setup.durations.rungs[rung.key]
    assert (c.startup_s, c.step_s, c.save_s, c.final_extra_s) == (30.0, 0.5, 5.0, 2.0)
    # The 3 s wait held both CPUs: 6 CPU-seconds, spread over the two evals.
    assert setup.durations.evals[(rung.key, "depth", "frozen")] == 23.0
    # The driver's start to the submission, the last eval's end 125 s later, 5 s stop.
    assert setup.measured.wall_s == start_s + 125 + 5
    [result] = run_seeds(setup, 1)
    assert result.makespan_s == setup.measured.wall_s


# ------------------------------------------------------------------ the command


def test_a_cluster_file_and_the_gantt_chart_and_json(tmp_path):
    cluster = tmp_path / "dgx.yaml"
    cluster.write_text("nodes: 96\ngpus_per_node: 8\ngpu: H100\nstorage_gb_s_per_node: 1.0\n")
    png = tmp_path / "gantt.png"
    args = [
        "simulate",
        str(SIZE_LADDER),
        "--cluster",
        str(cluster),
        "--gantt",
        str(png),
        "--json",
        "--no-recommend",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["cluster"] == "dgx" and out["summary"]["units"] == 768
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cluster_file_with_an_unknown_field_is_one_line_and_exit_2(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("nodes: 2\ngpus_per_node: 8\ngpu: H100\nnvlink: yes\n")
    result = CliRunner().invoke(app, ["simulate", str(SIZE_LADDER), "--cluster", str(cluster)])
    assert result.exit_code == 2 and "unknown cluster field(s) nvlink" in result.output, result.output
