"""`sweep run` end to end on real Ray, DeepSpeed and MLflow: scheduling checks, driver SIGKILL and
resume, a two-node cluster, and `sweep status` along the way."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import BUCKET
from mlflow.tracking import MlflowClient
from two_nodes import two_node_cluster
from typer.testing import CliRunner

from contracts.layout import RungPaths, read_json
from contracts.names import ROLE_TAG, RUNG_KEY_TAG, eval_metric_key
from contracts.spec import load_spec
from contracts.storage import root_of
from orchestrator.cli import app
from orchestrator.reconcile import differences, disk_points
from orchestrator.status import status_rows

pytestmark = pytest.mark.slow
runner = CliRunner()
SWEEP = [sys.executable, "-m", "orchestrator"]

# Rung b is the one killed mid-training. Its workers train on for 2-3 s after their driver is SIGKILLed
# (Ray tells them late), at ~15 steps/s here: b must keep training well past its first checkpoint plus
# that, or a kill meant for mid-rung finds it trained (at 48 steps, every 16, it once did).
B_STEPS, B_EVERY = 192, 64
B_LINE = f"steps: {B_STEPS}, checkpoint_interval: {B_EVERY}"  # b's line in SPEC, for specs derived from it

SPEC = """\
name: sw
data: {frames: 4, resolution: 16, tubelet: [2, 8, 8], world: {objects: 2, points: 8}}
pretraining:
  mask_ratio: 0.5
  decoder: {width: 16, depth: 1, mlp: 32, heads: 2}
  optimizer: {lr: 3.0e-3}
  batch_size: 8
  steps: 16
  checkpoint_interval: 8
  cpu_workers: 2
ladder:
  - {name: a, width: 16, depth: 1, mlp: 32, heads: 2}
  # b: 3 checkpoints x 2 tasks = 6 evals (more checkpoints made more evals, for no property more)
  - {name: b, width: 32, depth: 2, mlp: 64, heads: 2, steps: 192, checkpoint_interval: 64}
evals:
  tasks: [depth, action]
  checkpoints: all
  readout: {width: 16, heads: 2, epochs: 2, batch_size: 8, train_clips: 16, val_clips: 8, test_clips: 8}
"""
assert B_LINE in SPEC


def write_spec(tmp_path: Path, text: str = SPEC) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def rung_dirs(tmp_path: Path, spec: Path) -> dict[str, Path]:
    """Each rung's run directory: under runs/, or on the spec's `storage:`."""
    s = load_spec(spec)
    root = root_of(s.storage) if s.storage else tmp_path / "runs"
    return {r.name: root / s.name / r.key for r in s.rungs()}


def eval_records(run_dir: Path) -> dict[str, dict]:
    return {
        f"evals/{p.parent.name}/{p.name}": json.loads(p.read_text())
        for p in sorted(run_dir.glob("evals/*/*.json"))
    }


def wait_for(cond, timeout: float, what: str, proc=None, log: Path | None = None):
    """Poll `cond`; fail if `proc` (whose output is its stdout pipe, or `log`) exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            out = log.read_text() if log is not None else proc.stdout.read()
            raise AssertionError(f"sweep exited ({proc.returncode}) before {what}:\n{out}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def mlflow_runs(tmp_path: Path, sweep: str = "sw"):
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name(sweep).experiment_id])


def assert_mlflow_equals_disk(tmp_path: Path, dirs: dict[str, Path], sweep: str = "sw") -> None:
    """Every rung's MLflow run holds exactly its disk record: no point missing, none twice."""
    client, runs = mlflow_runs(tmp_path, sweep)
    by_key = {r.data.tags[RUNG_KEY_TAG]: r.info.run_id for r in runs if r.data.tags[ROLE_TAG] == "rung"}
    for d in dirs.values():
        points = disk_points(RungPaths(d))
        assert points["train/loss"], d
        assert differences(client, by_key[d.name], points) == [], d.name


def forget_in_mlflow(tmp_path: Path, run_id: str, after_step: int) -> int:
    """What a lost tracker buffer looks like: the run's eval metrics, and its training steps past
    `after_step`, never reached MLflow (removed from the SQLite store under MLflow's feet)."""
    with sqlite3.connect(tmp_path / "runs" / "mlflow.db") as db:
        gone = db.execute(
            "DELETE FROM metrics WHERE run_uuid = ? AND (key LIKE 'eval/%' OR step > ?)", (run_id, after_step)
        ).rowcount
        db.execute("DELETE FROM latest_metrics WHERE run_uuid = ? AND key LIKE 'eval/%'", (run_id,))
    return gone


def test_unschedulable_rung_exits_2_before_starting_anything(ray_cluster, tmp_path, monkeypatch):
    big_batch = SPEC.replace("batch_size: 8", "batch_size: 128")
    spec = write_spec(tmp_path, big_batch.replace("{name: a, width: 16", "{name: a, gpus: 64, width: 16"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2, result.output
    assert "rung a needs 64 workers" in result.output and "autoscaling" in result.output
    assert not (tmp_path / "runs" / "sw").exists() and not (tmp_path / "runs" / "mlflow.db").exists()
    too_many_cpus = write_spec(tmp_path, big_batch.replace("cpu_workers: 2", "cpu_workers: 64"))
    result = runner.invoke(app, ["run", str(too_many_cpus)])
    assert result.exit_code == 2 and "rung a needs 64 workers" in result.output


RESTARTED = "the tracker actor was restarted; reconciling MLflow with the disk"


def start_sweep(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """A `sweep run` in its own process group, its output (unbuffered) in `log`: readable while it runs
    and after a SIGKILL, and never a full pipe that blocks the driver."""
    with log.open("w") as out:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def train_loss_steps(tmp_path: Path, run_id: str) -> list[int]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


@pytest.mark.minutes
def test_sigterm_driver_sigkill_and_tracker_kill_lose_nothing_and_the_rerun_resumes(tmp_path):
    """One sweep's life, stopped three ways, each checked where no later reconcile can hide it (three
    driver runs, three fits and ten evals, where three tests took five runs, five fits and more evals):
    1. SIGTERM while rung a's evals run: the driver flushes and reconciles MLflow and exits 143.
    2. The rerun (rung b too) is SIGKILLed once rung a is evaluated and rung b has sealed a checkpoint.
    3. The rerun after the SIGKILL resumes without duplicates: nothing retrained or re-evaluated, rung b
       from a checkpoint sealed before the kill. Mid rung b its tracker actor is SIGKILLed: Ray restarts
       it and the driver reconciles MLflow with the disk, seen restoring what was taken from MLflow just
       before, and the run finishes: one MLflow run per rung, every step once, MLflow equal to the disk."""
    # Evals of 2 CPUs: in run 1 (2 CPUs) they run one at a time, only after rung a trains, and each depth
    # readout trains 8 epochs. The SIGTERM is sent as soon as the driver has marked rung a trained (its
    # status.json): four evals, each a Ray task of its own, are then still to run, seconds of work against
    # the 0.2 s poll. (Sent once an eval was logged, it once met a driver that had logged all four in one
    # tick and closed, and got Ray's own handler: exit 15.)
    evals = "evals:\n  cpus: 2\n  task_readout: {depth: {epochs: 8}}\n"
    spec = write_spec(tmp_path, SPEC.replace("evals:\n", evals))
    dirs = rung_dirs(tmp_path, spec)
    s = load_spec(spec)

    # ---- 1. SIGTERM, rung a alone on 2 CPUs.
    term_cmd = [*SWEEP, "run", str(spec), "--only", "a", "--num-cpus", "2"]
    proc = subprocess.Popen(
        term_cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:

        def trained():
            return (read_json(dirs["a"] / "status.json") or {}).get("state") == "done"

        wait_for(trained, 400, "rung a trained", proc)
        proc.send_signal(signal.SIGTERM)  # a `kill`: the same flushing path as Ctrl-C
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, out
    assert "interrupted by SIGTERM" in out and "reconciled" in out, out
    assert_mlflow_equals_disk(tmp_path, {"a": dirs["a"]})  # before any rerun: the buffer was flushed
    a_rank0 = (dirs["a"] / "workers" / "rank0.json").read_text()
    _, runs = mlflow_runs(tmp_path)
    a_run = next(r.info.run_id for r in runs if r.info.run_name.startswith("a-"))

    # ---- 2. The rerun: rung a's evals the SIGTERM left, and rung b (two more CPUs for an eval while b
    # trains). Its driver is SIGKILLed once rung a is evaluated and rung b has sealed its first checkpoint.
    cmd = [*SWEEP, "run", str(spec), "--max-concurrent", "1", "--num-cpus", "4"]
    proc = start_sweep(cmd, tmp_path, tmp_path / "killed-run.log")
    try:

        def a_done_b_started():
            recs = eval_records(dirs["a"])
            return (
                len(recs) == 4
                and all(r["state"] == "done" and r.get("logged") for r in recs.values())
                and (dirs["b"] / "checkpoints" / f"step_{B_EVERY:08d}" / "manifest.json").exists()
            )

        wait_for(
            a_done_b_started, 400, "rung a done and rung b checkpointed", proc, tmp_path / "killed-run.log"
        )
        during = {r["rung"]: r for r in status_rows(s, tmp_path / "runs")}
        assert during[dirs["a"].name]["state"] == "done" and during[dirs["a"].name]["evals_done"] == 4
        assert during[dirs["b"].name]["state"] == "running"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Ray's workers notice their driver is gone only after a moment, and may train on until then: wait until
    # rung b's progress stands still, so the step read below is where training really stopped.
    wait_for(
        lambda: time.time() - (dirs["b"] / "progress.json").stat().st_mtime > 10,
        120,
        "rung b's workers to stop",
    )
    after_kill = {r["rung"]: r for r in status_rows(s, tmp_path / "runs")}
    assert after_kill[dirs["b"].name]["state"] == "interrupted"
    a_evals = eval_records(dirs["a"])
    killed_at = json.loads((dirs["b"] / "progress.json").read_text())["step"]
    assert killed_at < B_STEPS
    sealed_before_rerun = [
        int(m.parent.name.split("_")[1]) for m in dirs["b"].glob("checkpoints/step_*/manifest.json")
    ]
    # The killed driver's tracker buffer held rung a's eval metrics and its last training steps (issue 18).
    assert forget_in_mlflow(tmp_path, a_run, after_step=5) > 0

    # ---- 3. The rerun after the SIGKILL, its tracker killed mid rung b.
    log = tmp_path / "rerun.log"
    started = time.time()
    proc = start_sweep(cmd, tmp_path, log)
    try:

        def b_resumed_mid_rung():
            prog = read_json(dirs["b"] / "progress.json") or {}
            resumed = read_json(dirs["b"] / "resume.json") or {}
            return (
                resumed.get("time", 0) > started  # b resumed in this run
                and prog.get("time", 0) > started  # and trained a step past its checkpoint
                and resumed["step"] < prog["step"] < B_STEPS
                and ray_children(proc.pid, "ray::Tracker")
            )

        wait_for(b_resumed_mid_rung, 400, "rung b resumed and mid-way", proc, log)
        [tracker] = ray_children(proc.pid, "ray::Tracker")
        tracker_killed_at = read_json(dirs["b"] / "progress.json")["step"]
        # What a lost tracker buffer looks like, made certain: rung a's eval metrics and its training steps
        # past 5 gone from MLflow as the tracker dies. The start's reconcile is over (b trains), so only
        # the restart's can restore them before the end's.
        assert forget_in_mlflow(tmp_path, a_run, after_step=5) > 0
        tracker.kill()  # SIGKILL: its buffer of unflushed metrics dies with it
        wait_for(
            lambda: "reconciled 2 rung(s)" in log.read_text().partition(RESTARTED)[2],
            300,
            "the tracker-restart reconcile",
            proc,
            log,
        )
        # MLflow right after the restart's reconcile: rung a whole again, rung b every step trained before
        # the tracker died, each once.
        assert_mlflow_equals_disk(tmp_path, {"a": dirs["a"]})
        b_run = next(r.info.run_id for r in mlflow_runs(tmp_path)[1] if r.info.run_name.startswith("b-"))
        b_held = train_loss_steps(tmp_path, b_run)
        assert len(b_held) == len(set(b_held)) and set(range(1, tracker_killed_at + 1)) <= set(b_held)
        proc.wait(900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert proc.returncode == 0, out

    # The start's reconcile restored what the SIGKILL lost (the forgotten points: 2 tasks x 2 checkpoints
    # x (metric + baseline per task) eval points, steps 6..16 of training), the restart's what the tracker
    # kill lost: each is seen doing it, in its own block of lines.
    def a_repairs(block: str) -> list[str]:
        return [ln for ln in block.splitlines() if ln.startswith(f"[{dirs['a'].name}] restored ")]

    at_start = a_repairs(out.partition("reconciled 2 rung(s)")[0])
    assert len(at_start) == 1 and " 11 training steps" in at_start[0], out
    assert RESTARTED in out, out
    at_restart = a_repairs(out.partition(RESTARTED)[2].partition("reconciled 2 rung(s)")[0])
    assert len(at_restart) == 1 and " 11 training steps" in at_restart[0], out
    assert len(ray_children(os.getpid(), "ray::Tracker")) == 0
    assert (dirs["a"] / "workers" / "rank0.json").read_text() == a_rank0  # not retrained since the SIGTERM
    assert eval_records(dirs["a"]) == a_evals  # not re-evaluated
    recs = eval_records(dirs["a"])
    assert len(recs) == 4 and all(r["state"] == "done" and r["logged"] for r in recs.values())
    resume = json.loads((dirs["b"] / "resume.json").read_text())
    assert B_EVERY <= resume["step"] <= killed_at  # resumed from its checkpoint, not from zero
    assert resume["step"] in sealed_before_rerun  # from a checkpoint sealed before the kill
    b_evals = eval_records(dirs["b"])
    assert len(b_evals) == 2 * (B_STEPS // B_EVERY) and all(r["state"] == "done" for r in b_evals.values())
    assert all(r["attempts"] == 1 for r in b_evals.values())
    after = {r["rung"]: r for r in status_rows(s, tmp_path / "runs")}
    assert all(r["state"] == "done" and r["evals_done"] == r["evals_total"] for r in after.values())
    # Every step once on disk through the driver kill, the resume and the tracker kill.
    steps = [json.loads(line)["step"] for line in (dirs["b"] / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, B_STEPS + 1))

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sw")
    runs = client.search_runs([exp.experiment_id])
    roles = sorted(r.data.tags[ROLE_TAG] for r in runs)
    assert roles == ["rung", "rung", "sweep"]  # exactly one MLflow run per rung, ever
    assert train_loss_steps(tmp_path, b_run) == list(range(1, B_STEPS + 1))  # every step once in MLflow too
    depth = client.get_metric_history(b_run, "eval/depth/abs_rel")
    assert sorted({m.step for m in depth}) == list(range(B_EVERY, B_STEPS + 1, B_EVERY))
    for name, d in dirs.items():  # every eval metric at every checkpoint step, once, as on disk
        run_id = next(r.info.run_id for r in runs if r.info.run_name.startswith(f"{name}-"))
        for rec_path, rec in eval_records(d).items():
            step = int(rec_path.split("/")[1].split("_")[1])
            task, mode = Path(rec_path).stem.rsplit("-", 1)
            for metric, value in rec["metrics"].items():
                hist = client.get_metric_history(run_id, eval_metric_key(task, mode, metric))
                assert [m.value for m in hist if m.step == step] == [value], (name, rec_path, metric)
    assert_mlflow_equals_disk(tmp_path, dirs)


def check_status_and_report_from_another_machine(tmp_path: Path, spec: Path, sweep: str, store: str) -> None:
    """`sweep status` and `sweep report` from a machine that only reads the store (another working
    directory with no MLflow DB, another cache): the report rebuilds MLflow from the records and is
    uploaded beside them."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "SWEEP4D_CACHE": str(tmp_path / "cache-elsewhere")}
    status = subprocess.run(
        [*SWEEP, "status", str(spec), "--json"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stdout + status.stderr
    rows = json.loads(status.stdout)
    assert [(r["state"], r["evals_done"], r["evals_total"]) for r in rows] == [("done", 2, 2)] * 2, rows
    report = subprocess.run(
        [*SWEEP, "report", str(spec), "--bootstrap", "50"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    assert f"{store}/{sweep}/report/report.html" in report.stdout
    assert (root_of(store) / sweep / "report" / "report.html").exists()
    assert not (elsewhere / "runs" / sweep).exists()
    client = MlflowClient(f"sqlite:///{elsewhere / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(sweep).experiment_id])
    rung_runs = [r for r in runs if r.data.tags[ROLE_TAG] == "rung"]
    assert len(rung_runs) == 2 and all("train/loss" in r.data.metrics for r in rung_runs)


@pytest.fixture(scope="module")
def two_nodes(s3, tmp_path_factory):
    """Started after the S3 server, so every node reads its AWS variables."""
    with two_node_cluster(tmp_path_factory.mktemp("two-node-caches"), dict(os.environ)) as nodes:
        yield nodes


@pytest.mark.minutes
def test_two_node_cluster_on_s3_both_nodes_do_work(tmp_path, two_nodes):
    """The nodes share no run directory: each has its own cache, and every record, shard and export goes
    through the store; `sweep status` and `sweep report` then work from a third place. (Two nodes on a
    shared disk: tests/test_lab.py's driver submitted as a Ray Job.)"""
    spec_text = SPEC.replace("name: sw\n", f"name: sw\nstorage: s3://{BUCKET}/two-node\n")
    spec = write_spec(
        tmp_path,
        spec_text.replace(B_LINE, "steps: 16, checkpoint_interval: 16").replace(
            "checkpoints: all", "checkpoints: final"
        ),
    )
    run = subprocess.run(
        [*SWEEP, "run", str(spec), "--address", two_nodes.address],
        cwd=tmp_path,
        env=two_nodes.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 node(s)" in run.stdout
    dirs = rung_dirs(tmp_path, spec)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["mlflow.db"]  # nothing of the run here
    for d in dirs.values():
        recs = eval_records(d)
        assert recs and all(r["state"] == "done" and r["logged"] for r in recs.values()), recs
        assert json.loads((d / "status.json").read_text())["state"] == "done"
    train_nodes = {
        json.loads(p.read_text())["node_id"] for d in dirs.values() for p in d.glob("workers/rank*.json")
    }
    eval_nodes = {r["node_id"] for d in dirs.values() for r in eval_records(d).values()}
    assert len(train_nodes | eval_nodes) == 2, (train_nodes, eval_nodes)
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sw").experiment_id])
    assert all("train/loss" in r.data.metrics for r in runs if r.data.tags[ROLE_TAG] == "rung")
    check_status_and_report_from_another_machine(tmp_path, spec, "sw", f"s3://{BUCKET}/two-node")


def ray_children(pid: int, title: str) -> list:
    """The processes under a driver whose Ray title starts with `title` (ray::Tracker, ...)."""
    import psutil

    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(title):
                found.append(p)
        except psutil.Error:
            continue
    return found
