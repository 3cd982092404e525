"""A lab's setup, for real: a sweep tracked on a shared MLflow server (PostgreSQL, basic auth) started by
the tests (tests/lab_server.py), `sweep ui` kept private, bad credentials refused before anything
starts, and the driver submitted as a Ray Job. Nothing mocked."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import requests
from mlflow.tracking import MlflowClient
from test_sweep import SPEC, SWEEP, wait_for, write_spec
from typer.testing import CliRunner

from contracts.layout import RungPaths
from contracts.names import ROLE_TAG, RUNG_KEY_TAG
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
