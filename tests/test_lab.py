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
from test_sweep import SPEC, SWEEP, eval_records, rung_dirs, wait_for, write_spec
from typer.testing import CliRunner

from contracts.layout import RungPaths
from contracts.names import ROLE_TAG, RUNG_KEY_TAG, eval_metric_key
from contracts.spec import load_spec
from orchestrator.cli import app
from orchestrator.reconcile import differences, disk_points
from orchestrator.tracking import Tracker

runner = CliRunner()
# Two rungs, b with four checkpoints, every checkpoint evaluated: small enough for CI, big enough to kill
# the driver between a finished rung and a half-trained one.
LAB_SPEC = SPEC.replace("steps: 48", "steps: 32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_spec(tmp_path: Path, url: str, text: str = LAB_SPEC) -> Path:
    return write_spec(tmp_path, text.replace("name: sw\n", f"name: sw\ntracking: {{uri: '{url}'}}\n"))


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


@pytest.mark.slow
def test_sweep_on_the_lab_server_survives_a_driver_kill_and_reruns_idempotently(
    lab_server, tmp_path, monkeypatch
):
    """One sweep, on one run directory: SIGKILL the driver mid-sweep, lose tracker points on the server,
    rerun (restores them, resumes), rerun again (changes nothing), then `sweep status` and `sweep report`
    from another directory; the password is in nothing the sweep wrote or said."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", lab_server.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", lab_server.password)
    env = lab_server.env()
    spec = server_spec(tmp_path, lab_server.url)
    dirs = rung_dirs(tmp_path, spec)
    said: list[str] = []
    cmd = [*SWEEP, "run", str(spec), "--max-concurrent", "1", "--num-cpus", "3"]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:

        def a_done_b_started():
            recs = eval_records(dirs["a"])
            return (
                len(recs) == 4
                and all(r["state"] == "done" and r.get("logged") for r in recs.values())
                and (dirs["b"] / "checkpoints" / "step_00000008" / "manifest.json").exists()
            )

        wait_for(a_done_b_started, 400, "rung a done and rung b checkpointed", proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        said.append(proc.stdout.read())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_for(
        lambda: time.time() - (dirs["b"] / "progress.json").stat().st_mtime > 10,
        120,
        "rung b's workers to stop",
    )
    client = MlflowClient(lab_server.url)
    a_run = rung_runs(client)[dirs["a"].name]
    assert forget_on_server(lab_server.database, a_run, after_step=5) > 0

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    said += [rerun.stdout, rerun.stderr]
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"[{dirs['a'].name}] restored " in rerun.stdout and " 11 training steps" in rerun.stdout, (
        rerun.stdout
    )
    resume = json.loads((dirs["b"] / "resume.json").read_text())
    assert resume["step"] >= 8  # resumed from a checkpoint, not from zero
    by_key = rung_runs(client)
    for d in dirs.values():  # every eval metric at every checkpoint, once, as on disk
        recs = eval_records(d)
        assert recs and all(r["state"] == "done" for r in recs.values())
        for rec_path, rec in recs.items():
            step = int(rec_path.split("/")[1].split("_")[1])
            task, mode = Path(rec_path).stem.rsplit("-", 1)
            for metric, value in rec["metrics"].items():
                hist = client.get_metric_history(by_key[d.name], eval_metric_key(task, mode, metric))
                assert [m.value for m in hist if m.step == step] == [value], (d.name, rec_path, metric)
    assert_store_equals_disk(client, dirs)
    held = {k: len(client.get_metric_history(by_key[dirs["b"].name], k)) for k in ("train/loss", "train/lr")}

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    said += [again.stdout, again.stderr]
    assert again.returncode == 0 and "nothing missing" in again.stdout, again.stdout + again.stderr
    assert {k: len(client.get_metric_history(by_key[dirs["b"].name], k)) for k in held} == held
    assert rung_runs(client) == by_key  # the same runs, none created twice
    assert_store_equals_disk(client, dirs)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = ["--runs-dir", str(tmp_path / "runs")]
    status = subprocess.run(
        [*SWEEP, "status", str(spec), *runs, "--json"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    said += [status.stdout, status.stderr]
    assert status.returncode == 0, status.stdout + status.stderr
    rows = json.loads(status.stdout)
    assert [(r["state"], r["evals_done"] == r["evals_total"]) for r in rows] == [("done", True)] * 2, rows
    report = subprocess.run(
        [*SWEEP, "report", str(spec), *runs, "--bootstrap", "50"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    said += [report.stdout, report.stderr]
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "runs" / "sw" / "report" / "report.html").exists()
    assert not (elsewhere / "runs").exists()  # nothing tracked locally: the server is the store
    assert_store_equals_disk(client, dirs)

    # The password is in nothing the sweep wrote: run directories, records, reports, logs, the server's
    # artifacts, MLflow's params and tags, and what every command printed.
    assert files_holding(tmp_path, lab_server.password) == []
    assert files_holding(lab_server.artifacts, lab_server.password) == []
    assert not [s for s in said if lab_server.password in s]
    exp = client.get_experiment_by_name("sw")
    for r in client.search_runs([exp.experiment_id]):
        assert lab_server.password not in json.dumps([r.data.params, r.data.tags]), r.info.run_name
    assert lab_server.password not in (tmp_path / "runs" / "sw" / "sweep.json").read_text()


# ------------------------------------------------------------------ the driver as a Ray Job


def start_two_node_cluster(tmp_path: Path, env: dict) -> tuple[list[subprocess.Popen], str, str]:
    """A head with a dashboard (the job server) and a worker node, as test_sweep's two-node test."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    port, dashboard = free_port(), free_port()
    common = ["--block", "--disable-usage-stats", "--num-cpus", "2"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--port",
            str(port),
            "--include-dashboard=true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--ray-client-server-port",
            str(free_port()),
            *common,
        ],
        env=env,
        **quiet,
    )
    worker = subprocess.Popen(
        [ray_bin, "start", "--address", f"127.0.0.1:{port}", "--resources", '{"second_node": 1}', *common],
        env=env,
        **quiet,
    )
    return [head, worker], f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"


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


@pytest.mark.slow
def test_submitted_driver_stops_like_sigterm_and_resumes_when_resubmitted(lab_server, tmp_path, monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", lab_server.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", lab_server.password)
    # The cluster's own environment holds the credentials (as a lab's secret would) and runs this checkout.
    venv_bin = str(Path(sys.executable).parent)
    env = {**lab_server.env(), "RAY_AUTH_MODE": "disabled", "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    text = SPEC.replace("name: sw\n", "name: job\n").replace("checkpoints: all", "checkpoints: final")
    spec = server_spec(tmp_path, lab_server.url, text)
    runs = tmp_path / "runs"
    dirs = {r.name: runs / "job" / r.key for r in load_spec(spec).rungs()}
    nodes, gcs, dashboard = start_two_node_cluster(tmp_path, env)
    try:

        def cluster_up():
            try:
                JobSubmissionClient(dashboard).list_jobs()
            except Exception:
                return False
            return _alive_nodes(gcs, env) == 2

        wait_for(cluster_up, 180, "the two-node cluster and its job server")
        jobs = JobSubmissionClient(dashboard)
        submit = [*SWEEP, "run", str(spec), "--submit", "--address", dashboard, "--runs-dir", str(runs)]
        first = subprocess.run(submit, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stdout + first.stderr
        job_id = first.stdout.split("Ray job ")[1].split()[0]
        assert f"ray job logs --address {dashboard} --follow {job_id}" in first.stdout

        wait_for(
            lambda: (
                (dirs["b"] / "checkpoints" / "step_00000008" / "manifest.json").exists()
                or jobs.get_job_status(job_id).is_terminal()
            ),
            400,
            "rung b's first checkpoint",
        )
        assert jobs.get_job_status(job_id) == JobStatus.RUNNING, jobs.get_job_logs(job_id)
        assert jobs.stop_job(job_id)
        wait_for(lambda: jobs.get_job_status(job_id).is_terminal(), 180, "the job to stop")
        logs = jobs.get_job_logs(job_id)
        assert jobs.get_job_status(job_id) == JobStatus.STOPPED, logs
        assert "interrupted by SIGTERM" in logs and "reconciled" in logs, logs
        stopped_at = json.loads((dirs["b"] / "progress.json").read_text())["step"]
        assert stopped_at < 48

        second = subprocess.run(submit, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stdout + second.stderr
        job2 = second.stdout.split("Ray job ")[1].split()[0]
        wait_for(lambda: jobs.get_job_status(job2).is_terminal(), 600, "the resubmitted job to finish")
        logs2 = jobs.get_job_logs(job2)
        assert jobs.get_job_status(job2) == JobStatus.SUCCEEDED, logs2
        assert json.loads((dirs["b"] / "resume.json").read_text())["step"] >= 8, logs2  # from a checkpoint
        for d in dirs.values():
            recs = eval_records(d)
            assert len(recs) == 2 and all(r["state"] == "done" and r["logged"] for r in recs.values()), recs
        assert_store_equals_disk(MlflowClient(lab_server.url), dirs, "job")
        assert lab_server.password not in logs + logs2
    finally:
        for p in reversed(nodes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in nodes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _alive_nodes(gcs: str, env: dict) -> int:
    count = [
        sys.executable,
        "-c",
        f"import ray; ray.init(address='{gcs}', logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))",
    ]
    out = subprocess.run(count, env=env, capture_output=True, text=True).stdout.strip()
    return int(out.splitlines()[-1]) if out else 0
