"""A lab's setup, for real: a sweep tracked on a shared MLflow server (PostgreSQL, basic auth) started by
the tests (tests/lab_server.py), `sweep ui` kept private, bad credentials refused before anything
starts, and the driver submitted as a Ray Job. Nothing mocked."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import requests
from mlflow.tracking import MlflowClient
from test_sweep import B_EVERY, B_LINE, B_STEPS, SPEC, SWEEP, eval_records, wait_for, write_spec
from two_nodes import two_node_cluster
from typer.testing import CliRunner

from contracts.layout import RungPaths, read_json
from contracts.names import ROLE_TAG, RUNG_KEY_TAG
from contracts.spec import load_spec
from orchestrator.cli import app
from orchestrator.reconcile import differences, disk_points
from orchestrator.tracking import Tracker

runner = CliRunner()
# Two rungs, b with two checkpoints, every checkpoint evaluated: small enough for CI, big enough to kill
# the driver between a finished rung and a half-trained one.
LAB_SPEC = SPEC.replace(B_LINE, "steps: 32, checkpoint_interval: 16")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_spec(tmp_path: Path, url: str, text: str = LAB_SPEC, sweep: str = "sw") -> Path:
    named = f"name: {sweep}\n"
    return write_spec(tmp_path, text.replace(named, f"{named}tracking: {{uri: '{url}'}}\n"))


def rung_runs(client: MlflowClient, sweep: str = "sw") -> dict[str, str]:
    """rung key -> MLflow run id, from the store."""
    exp = client.get_experiment_by_name(sweep)
    runs = client.search_runs([exp.experiment_id])
    return {r.data.tags[RUNG_KEY_TAG]: r.info.run_id for r in runs if r.data.tags[ROLE_TAG] == "rung"}


def assert_store_equals_disk(client: MlflowClient, dirs: dict[str, Path], sweep: str = "sw") -> None:
    """One value per (key, step), exactly the disk record's points, in every rung's run."""
    by_key = rung_runs(client, sweep)
    assert sorted(by_key) == sorted(d.name for d in dirs.values())
    for d in dirs.values():
        points = disk_points(RungPaths(d))
        assert points["train/loss"], d
        assert differences(client, by_key[d.name], points) == [], d.name


# ------------------------------------------------------------------ sweep ui, kept private


def test_ui_on_the_network_without_a_password_exits_2_saying_how_to_set_one(tmp_path, monkeypatch):
    monkeypatch.delenv("SWEEP4D_UI_ADMIN_PASSWORD", raising=False)
    monkeypatch.chdir(tmp_path)
    port = free_port()
    result = runner.invoke(app, ["ui", "--host", "0.0.0.0", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert "SWEEP4D_UI_ADMIN_PASSWORD" in result.output and "--admin-password-file" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3
    with socket.socket() as s:  # nothing was started on the port
        s.bind(("0.0.0.0", port))


@pytest.mark.slow
def test_ui_with_a_password_refuses_anonymous_requests(tmp_path):
    db = tmp_path / "runs" / "mlflow.db"
    db.parent.mkdir()
    MlflowClient(f"sqlite:///{db}").create_experiment("sw")
    spec = write_spec(
        tmp_path, LAB_SPEC.replace("name: sw\n", f"name: sw\ntracking: {{uri: 'sqlite:///{db}'}}\n")
    )
    password_file = tmp_path / "ui-password"
    password_file.write_text("ui-Secret-51x\n")
    port = free_port()
    host = "127.0.0.2"  # not 127.0.0.1, so a login is required; still only on this machine
    proc = subprocess.Popen(
        [
            *SWEEP,
            "ui",
            str(spec),
            "--host",
            host,
            "--port",
            str(port),
            "--admin-password-file",
            str(password_file),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://{host}:{port}/api/2.0/mlflow/experiments/search?max_results=5"
    try:

        def up():
            try:
                return requests.get(f"http://{host}:{port}/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, 120, "sweep ui to answer", proc)
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(url, auth=("admin", "wrong"), timeout=10).status_code == 401
        ok = requests.get(url, auth=("admin", "ui-Secret-51x"), timeout=10)
        assert ok.status_code == 200 and "sw" in [e["name"] for e in ok.json()["experiments"]]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "log in as admin" in out and "ui-Secret-51x" not in out


# ------------------------------------------------------------------ credentials checked first


def test_bad_credentials_or_server_exit_2_before_anything_starts(lab_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", lab_server.username)
    cases = {
        "wrong password": (lab_server.url, "not-the-password", "refused these credentials"),
        "unreachable": (f"http://127.0.0.1:{free_port()}", lab_server.password, "cannot be reached"),
        "password in the spec": (
            lab_server.url.replace("://", f"://{lab_server.username}:{lab_server.password}@"),
            lab_server.password,
            "remove them from the spec",
        ),
    }
    for what, (url, password, says) in cases.items():
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        spec = server_spec(tmp_path, url)
        t0 = time.monotonic()
        result = runner.invoke(app, ["run", str(spec)])
        assert result.exit_code == 2, (what, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], (what, result.output)
        assert lab_server.password not in result.output and "not-the-password" not in result.output
        assert time.monotonic() - t0 < 30, what  # one short request, not MLflow's minutes of retries
        assert not (tmp_path / "runs").exists(), what  # nothing started, nothing written


def test_reconcile_on_the_server_writes_only_what_it_lacks(lab_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", lab_server.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", lab_server.password)
    tracker = Tracker(lab_server.url, "/a/local/root/the/server/must/not/be/told")
    exp = tracker.experiment_id("reconcile-on-server")
    # the server's proxied artifact store, not a path of this machine
    assert tracker.client.get_experiment(exp).artifact_location.startswith("mlflow-artifacts:")
    run = tracker.client.create_run(exp).info.run_id
    points = {"train/loss": {s: 1.0 / s for s in range(1, 1201)}, "eval/depth/frozen/abs_rel": {8: 0.5}}
    first = {"train/loss": {s: v for s, v in points["train/loss"].items() if s <= 1000}}
    assert tracker.reconcile(run, first) == {"train/loss": list(range(1, 1001))}
    restarted = Tracker(lab_server.url)  # knows nothing: reads what the server holds
    assert restarted.reconcile(run, points) == {
        "train/loss": list(range(1001, 1201)),
        "eval/depth/frozen/abs_rel": [8],
    }
    assert Tracker(lab_server.url).reconcile(run, points) == {}
    assert differences(tracker.client, run, points) == []


# ------------------------------------------------------------------ a sweep on the lab's server


def forget_on_server(database: str, run_id: str, after_step: int) -> int:
    """What a lost tracker buffer looks like: eval metrics and steps past `after_step` gone from the
    server's database under MLflow's feet."""
    with psycopg.connect(database) as db, db.cursor() as cur:
        cur.execute(
            "DELETE FROM metrics WHERE run_uuid = %s AND (key LIKE 'eval/%%' OR step > %s)",
            (run_id, after_step),
        )
        gone = cur.rowcount
        cur.execute("DELETE FROM latest_metrics WHERE run_uuid = %s AND key LIKE 'eval/%%'", (run_id,))
    return gone


def files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_submit_refuses_what_a_job_would_lose_before_submitting(tmp_path, monkeypatch):
    """A job's working directory is a temporary copy: relative run directories or a SQLite store there
    would vanish with it. Exit 2, nothing submitted (no Ray cluster is even needed to say so)."""
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, LAB_SPEC)
    result = runner.invoke(app, ["run", str(spec), "--submit", "--address", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "a store the cluster keeps" in result.output, result.output
    result = runner.invoke(
        app, ["run", str(spec), "--submit", "--address", "http://127.0.0.1:1", "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "is a SQLite file on this machine" in result.output, result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ the driver as a Ray Job, on the server


def job_driver_logs(jobs, job_id: str, timeout: float) -> str:
    wait_for(lambda: jobs.get_job_status(job_id).is_terminal(), timeout, f"Ray job {job_id} to end")
    return jobs.get_job_logs(job_id)


@pytest.mark.slow
@pytest.mark.minutes
def test_submitted_sweep_on_the_lab_server_stops_loses_points_and_resumes_on_two_nodes(
    lab_server, tmp_path, tmp_path_factory, monkeypatch
):
    """`sweep run --submit` on a two-node cluster sharing a disk, tracked on the lab's server: the job is
    stopped once rung b sealed a checkpoint (`ray job stop`: the driver's SIGTERM path stops the fits,
    flushes and reconciles), b's points past step 5 are deleted from the server (what a lost tracker
    buffer takes), and the job submitted again restores them and resumes b from its checkpoint; its driver
    is then SIGKILLed mid rung b. The rerun from the user's machine (`--address`) finishes the sweep,
    b resumed from a checkpoint sealed before the kill, and a second rerun does nothing. The server ends
    equal to the disk (every eval metric at every evaluated checkpoint once), both nodes used; `sweep
    status` and `sweep report` work from another directory without Ray; the password is in nothing
    written or said."""
    from ray.job_submission import JobStatus

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", lab_server.username)  # this test's own reads
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", lab_server.password)
    # The cluster's own environment holds the credentials (as a lab's secret would) and runs this checkout.
    venv_bin = str(Path(sys.executable).parent)
    env = {**lab_server.env(), "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    # Evals at a's last checkpoint (16) and b's first and last.
    evaluated = f"checkpoints: [16, {B_EVERY}, {B_STEPS}]"
    text = SPEC.replace("name: sw\n", "name: job\n").replace("checkpoints: all", evaluated)
    spec = server_spec(tmp_path, lab_server.url, text, sweep="job")
    runs = tmp_path / "runs"  # absolute, on the disk both nodes share
    dirs = {r.name: runs / "job" / r.key for r in load_spec(spec).rungs()}
    submit = [*SWEEP, "run", str(spec), "--submit", "--runs-dir", str(runs)]
    said: list[str] = []
    with two_node_cluster(tmp_path_factory.mktemp("job-caches"), env, dashboard=True) as nodes:
        jobs = wait_for_job_server(nodes.dashboard)

        def submit_job() -> str:
            """`sweep run --submit`; -> the job id it printed, with how to follow the job."""
            done = subprocess.run(
                [*submit, "--address", nodes.dashboard],
                env=nodes.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            said.extend([done.stdout, done.stderr])
            assert done.returncode == 0, done.stdout + done.stderr
            job_id = done.stdout.split("Ray job ")[1].split()[0]
            assert f"ray job logs --address {nodes.dashboard} --follow {job_id}" in done.stdout
            return job_id

        job_id = submit_job()
        # Both rungs train at once (2 CPUs each, one per node); b's first checkpoint is B_EVERY steps in.
        wait_for(
            lambda: (
                (dirs["b"] / "checkpoints" / f"step_{B_EVERY:08d}" / "manifest.json").exists()
                or jobs.get_job_status(job_id).is_terminal()
            ),
            400,
            "rung b's first checkpoint",
        )
        assert jobs.stop_job(job_id), jobs.get_job_logs(job_id)
        logs = job_driver_logs(jobs, job_id, 180)
        said.append(logs)
        assert jobs.get_job_status(job_id) == JobStatus.STOPPED, logs
        assert "interrupted by SIGTERM" in logs and "reconciled" in logs and "2 node(s)" in logs, logs
        # The driver stopped b's fit before it exited (at 8 clips a step, b trained to its end in the ~5 s
        # of flush and reconcile that took before orchestrator.training.stop).
        stopped_at = json.loads((dirs["b"] / "progress.json").read_text())["step"]
        assert B_EVERY <= stopped_at < B_STEPS
        client = MlflowClient(lab_server.url)
        b_run = rung_runs(client, "job")[dirs["b"].name]
        assert forget_on_server(lab_server.database, b_run, after_step=5) > 0  # a lost buffer, made certain

        # The job submitted again restores the forgotten points and resumes b; its driver is SIGKILLed
        # once b has trained a step past the checkpoint it resumed from (a crashed head, an OOM kill).
        started = time.time()
        job2 = submit_job()

        def b_resumed_mid_rung():
            prog = read_json(dirs["b"] / "progress.json") or {}
            resumed = read_json(dirs["b"] / "resume.json") or {}
            return jobs.get_job_status(job2).is_terminal() or (
                resumed.get("time", 0) > started and prog.get("time", 0) > started and prog["step"] < B_STEPS
            )

        wait_for(b_resumed_mid_rung, 400, "rung b resumed by the second job")
        driver = read_json(runs / "job" / ".lock")
        os.kill(driver["pid"], signal.SIGKILL)
        logs2 = job_driver_logs(jobs, job2, 180)
        said.append(logs2)
        assert jobs.get_job_status(job2) == JobStatus.FAILED, logs2
        # Its workers notice the driver is gone only after a moment: wait until b's progress stands still.
        wait_for(
            lambda: time.time() - (dirs["b"] / "progress.json").stat().st_mtime > 10,
            120,
            "rung b's workers to stop",
        )
        killed_at = json.loads((dirs["b"] / "progress.json").read_text())["step"]
        assert killed_at < B_STEPS
        resumed_from = json.loads((dirs["b"] / "resume.json").read_text())["step"]

        # The rerun, from the user's machine against the cluster (`--address`), finishes the sweep; a second
        # rerun finds nothing to do.
        rerun = [*SWEEP, "run", str(spec), "--address", nodes.address, "--runs-dir", str(runs)]

        def run_here() -> str:
            done = subprocess.run(
                rerun, cwd=tmp_path, env=nodes.env, capture_output=True, text=True, timeout=600
            )
            said.extend([done.stdout, done.stderr])
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        rerun_started = time.time()
        run_here()
        again = run_here()

    restored = [ln for ln in logs2.splitlines() if ln.startswith(f"[{dirs['b'].name}] restored ")]
    assert len(restored) == 1 and f" {stopped_at - 5} training steps" in restored[0], logs2
    # The rerun resumed b from a checkpoint sealed before the kill, not from zero.
    final = json.loads((dirs["b"] / "resume.json").read_text())
    assert final["time"] > rerun_started and B_EVERY <= resumed_from <= final["step"] <= killed_at, final
    # Idempotent: the second rerun trains, evaluates and restores nothing.
    assert "nothing missing" in again and "submitted (" not in again and "restored" not in again, again

    for d in dirs.values():
        recs = eval_records(d)
        assert all(r["state"] == "done" and r["logged"] for r in recs.values()), recs
    assert sorted(len(eval_records(d)) for d in dirs.values()) == [2, 4]  # 2 tasks x (1 | 2 checkpoints)
    # Every point on disk once on the server, eval metrics at every evaluated checkpoint with their values.
    assert_store_equals_disk(client, dirs, "job")
    train_nodes = {
        json.loads(p.read_text())["node_id"] for d in dirs.values() for p in d.glob("workers/rank*.json")
    }
    eval_nodes = {r["node_id"] for d in dirs.values() for r in eval_records(d).values()}
    assert len(train_nodes | eval_nodes) == 2, (train_nodes, eval_nodes)
    check_status_and_report_from_elsewhere(tmp_path, spec, runs, lab_server.url, said)
    # The password is in nothing the sweep wrote or said, nor in MLflow's params and tags.
    assert files_holding(tmp_path, lab_server.password) == []
    assert files_holding(lab_server.artifacts, lab_server.password) == []
    assert not [s for s in said if lab_server.password in s]
    for r in client.search_runs([client.get_experiment_by_name("job").experiment_id]):
        assert lab_server.password not in json.dumps([r.data.params, r.data.tags]), r.info.run_name


def check_status_and_report_from_elsewhere(
    tmp_path: Path, spec: Path, runs: Path, url: str, said: list[str]
) -> None:
    """`sweep status` and `sweep report` from another working directory, with no Ray: the disk's records
    and the lab's server are all they read; the report lands in the sweep's run directory and on the
    server's parent run."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = subprocess.run(
        [*SWEEP, "status", str(spec), "--runs-dir", str(runs), "--json"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    said.extend([status.stdout, status.stderr])
    assert status.returncode == 0, status.stdout + status.stderr
    rows = json.loads(status.stdout)
    assert sorted((r["state"], r["evals_done"], r["evals_total"]) for r in rows) == [
        ("done", 2, 2),
        ("done", 4, 4),
    ], rows
    report = subprocess.run(
        [*SWEEP, "report", str(spec), "--runs-dir", str(runs), "--bootstrap", "20"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
    )
    said.extend([report.stdout, report.stderr])
    assert report.returncode == 0, report.stdout + report.stderr
    assert (runs / "job" / "report" / "report.html").exists(), report.stdout
    assert list(elsewhere.iterdir()) == [], list(elsewhere.iterdir())  # nothing written where it ran
    client = MlflowClient(url)  # credentials from the environment
    exp = client.get_experiment_by_name("job")
    [parent] = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags[ROLE_TAG] == "sweep"]
    published = [a.path for a in client.list_artifacts(parent.info.run_id, "report")]
    assert "report/report.html" in published, published


def wait_for_job_server(url: str):
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 180
    while True:
        try:
            jobs = JobSubmissionClient(url)
            jobs.list_jobs()
            return jobs
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(1)
