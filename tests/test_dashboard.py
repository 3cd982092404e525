"""The dashboard a researcher watches: a real tiny sweep, `sweep report`, `sweep ui`, MLflow's REST API,
and the rendered pages in headless Chromium (screenshots saved under the test's tmp dir)."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from browser import chromium, shot, wait_for_text
from conftest import MINI, MINI_REFS, MINI_RUNGS
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = [pytest.mark.slow, pytest.mark.minutes]  # the shared sweep + report, if first: ~2 min
SWEEP = [sys.executable, "-m", "orchestrator"]
RUNGS = MINI_RUNGS
NAME = MINI  # the session's shared mini sweep (conftest.mini_sweep): two rungs and two reference models


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode() if body else None, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class UI:
    """`sweep ui` running as a subprocess; its output goes to a file so the test can read what it printed.
    Started, it is waited for (`wait`) unless `wait=False`: two can start side by side on two cores."""

    def __init__(self, cwd: Path, *args: str, wait: bool = True, not_port: int | None = None):
        self.port, self.log = free_port(), cwd / f"ui-{time.monotonic_ns()}.log"
        while self.port == not_port:  # another UI's port, not bound yet while both start
            self.port = free_port()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [*SWEEP, "ui", "--port", str(self.port), *args],
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: list[psutil.Process] = []
        if wait:
            self.wait()

    def wait(self) -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.output()
            if (
                "Ctrl-C stops the server" in self.output()
            ):  # printed once the server answers and links are out
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"sweep ui did not answer within 120 s:\n{self.output()}")
        # The MLflow server runs in its own session: remember it, to check it stops with `sweep ui`.
        self.server = psutil.Process(self.proc.pid).children(recursive=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """Whatever is left of it, at once (a test that would have stopped it did not run or failed)."""
        server = self.server
        if not server:  # killed before it answered: its server, if it got that far
            with contextlib.suppress(psutil.NoSuchProcess):
                server = psutil.Process(self.proc.pid).children(recursive=True)
        if self.proc.poll() is None:
            self.proc.kill()
        for p in server:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()

    def stop(self, sig: int = signal.SIGINT, group: bool = True) -> int:
        """SIGINT to the process group is what Ctrl-C in a terminal sends; SIGTERM alone is what `kill`
        sends."""
        os.killpg(self.proc.pid, sig) if group else os.kill(self.proc.pid, sig)
        try:
            try:
                code = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"sweep ui did not exit within 60 s of {sig!r}:\n{self.output()}"
                ) from None
            gone, alive = psutil.wait_procs(self.server, timeout=30)
            assert not alive, (
                f"sweep ui exited but left the MLflow server running: {[p.cmdline() for p in alive]}"
            )
            return code
        finally:  # leave nothing running on a shared machine, whatever failed
            self.kill()


@pytest.fixture(scope="module")
def served(mini_sweep):
    """The session's finished mini sweep with its report (conftest.mini_sweep), and `sweep ui` serving its
    store. Beside it, started at the same time (each start is one process after another, ~10 s of one
    core), the second `sweep ui` that test_sigterm_stops_the_server_too kills, and, once the first
    serves, the `sweep ui` on its port that test_taken_port_is_exit_2_with_a_message reads: they run
    while the other tests do instead of one after another."""
    root = mini_sweep["root"]
    for done in (mini_sweep["run"], mini_sweep["report"]):
        assert done.returncode == 0, done.stdout + done.stderr
    ui = UI(root, "spec.yaml", wait=False)
    spare = UI(root, "spec.yaml", wait=False, not_port=ui.port)
    taken = None
    try:
        ui.wait()
        taken = subprocess.Popen(
            [*SWEEP, "ui", "spec.yaml", "--port", str(ui.port)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        spare.wait()
        url = ui.url
        exp = get(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={NAME}")["experiment"]
        runs = get(
            f"{url}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [exp["experiment_id"]], "max_results": 100},
        )["runs"]
        yield {
            "root": root,
            "url": url,
            "ui": ui,
            "spare": spare,
            "taken": taken,
            "exp": exp["experiment_id"],
            "runs": runs,
        }
        assert ui.stop() == 0  # Ctrl-C stops `sweep ui` and the server with it
    finally:  # leave nothing running on a shared machine, whatever failed or was not run
        for u in (ui, spare):
            u.kill()
        if taken is not None and taken.poll() is None:
            taken.kill()


def tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def by_role(runs: list[dict], role: str) -> list[dict]:
    return [r for r in runs if tags(r).get("sweep4d.role") == role]


def test_rest_one_parent_and_one_child_per_rung_with_params_and_metrics(served):
    parents, children = by_role(served["runs"], "sweep"), by_role(served["runs"], "rung")
    refs = by_role(served["runs"], "reference")
    assert len(parents) == 1 and len(served["runs"]) == 1 + len(RUNGS) + len(MINI_REFS)
    assert len(refs) == len(MINI_REFS)  # the shared sweep's references: child runs, but no rung's
    assert sorted(r["info"]["run_name"].split("-")[0] for r in children) == list(RUNGS)
    for run in children:
        t = tags(run)
        assert t["mlflow.parentRunId"] == parents[0]["info"]["run_id"]
        assert t["sweep4d.rung_key"].startswith(t["sweep4d.rung"] + "-") and t["sweep4d.status"] == "finished"
        params = {p["key"] for p in run["data"]["params"]}
        assert {
            "width",
            "depth",
            "heads",
            "mlp",
            "encoder_params",
            "flops_per_clip",
            "gpus",
            "steps",
        } <= params
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {
            "train/loss",
            "train/lr",
            "train/clips_per_s",
            "eval/depth/abs_rel",
            "eval/action/top1",
        } <= metrics
        assert any(k.startswith("system/") for k in metrics)
    micro1 = next(r for r in children if r["info"]["run_name"].startswith("micro1-"))  # checkpoints: 8, 16
    history = get(
        f"{served['url']}/api/2.0/mlflow/metrics/get-history?run_id={micro1['info']['run_id']}"
        "&metric_key=eval/depth/abs_rel"
    )["metrics"]
    assert sorted(m["step"] for m in history) == [8, 16]  # logged at the checkpoints' steps


def test_browser_shows_every_rung_its_eval_metrics_and_the_report(served, tmp_path):
    url, exp = served["url"], served["exp"]
    parent = by_role(served["runs"], "sweep")[0]["info"]["run_id"]
    child = by_role(served["runs"], "rung")[0]
    names = [r["info"]["run_name"] for r in by_role(served["runs"], "rung")]
    # The link `sweep ui` prints is what a person clicks: it must open the runs table, not MLflow 3's GenAI
    # overview of traces, which is empty for a sweep.
    printed = re.search(rf"sweep '{NAME}': (\S+)", served["ui"].output())
    assert printed and printed.group(1).startswith(f"{url}/#/experiments/{exp}"), served["ui"].output()
    with chromium(tmp_path) as d:
        d.get(printed.group(1))
        wait_for_text(d, NAME, "Run Name", "matching runs", what="the runs table at the printed link")
        # Rung runs are nested under the sweep's run: expand it as a person would.
        parent_cell = (
            f"//a[normalize-space()='{NAME}' and contains(@href,'/runs/')]/ancestor::*[@role='gridcell'][1]"
            "//button"
        )
        WebDriverWait(d, 60).until(lambda drv: drv.find_elements(By.XPATH, parent_cell))
        d.find_element(By.XPATH, parent_cell).click()
        wait_for_text(d, *names, what="the expanded runs table")
        shot(d, tmp_path / "experiment.png")

        d.get(f"{url}/#/experiments/{exp}/runs/{child['info']['run_id']}")
        wait_for_text(
            d,
            child["info"]["run_name"],
            "eval/depth/abs_rel",
            "eval/action/top1",
            "train/loss",
            what="a rung's run page",
        )
        shot(d, tmp_path / "rung.png")

        d.get(f"{url}/#/experiments/{exp}/runs/{parent}/artifacts")
        wait_for_text(d, "report", what="the sweep run's artifacts")
        folder = "//div[normalize-space()='report']"  # the tree's folder node (an icon, then the name)
        WebDriverWait(d, 60).until(lambda drv: drv.find_elements(By.XPATH, folder))
        d.find_elements(By.XPATH, folder)[-1].click()
        wait_for_text(d, "report.html", "fits.json", "scaling.png", what="the report folder")
        shot(d, tmp_path / "artifacts.png")
    assert all(
        (tmp_path / f).stat().st_size > 10_000 for f in ("experiment.png", "rung.png", "artifacts.png")
    )


def test_server_binds_to_loopback_only(served):
    port = int(served["url"].rsplit(":", 1)[1])
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    # /proc/net/tcp: local address as hex IP:port (little-endian IP), state 0A = LISTEN.
    ours = [
        line.split()[1]
        for line in listening
        if line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")
    ]
    assert ours == [f"0100007F:{port:04X}"], ours  # 127.0.0.1, not 0.0.0.0


def test_taken_port_is_exit_2_with_a_message(served):
    """`sweep ui` on the port the served UI holds (started by the fixture once that UI answered)."""
    port = served["url"].rsplit(":", 1)[1]
    proc = served["taken"]
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"port {port}" in stderr and "in use" in stderr
    assert "Traceback" not in stderr


def test_missing_store_is_exit_2_naming_the_path(tmp_path):
    proc = subprocess.run(
        [*SWEEP, "ui", "--port", str(free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert str(tmp_path / "runs" / "mlflow.db") in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # a failed `sweep ui` leaves nothing behind


def test_sigterm_stops_the_server_too(served):
    """`kill PID` (a service manager, `timeout`, a CI runner) must not orphan the MLflow server on its
    port."""
    ui = served["spare"]  # a second `sweep ui` on the same store, started beside the fixture's
    assert ui.server, "no MLflow server process found under sweep ui"
    assert ui.stop(signal.SIGTERM, group=False) == 0
    # The port is free again: nothing listens on it. SO_REUSEADDR lets the bind past the TIME_WAIT that
    # the server's own close of a /health connection may leave (seen once under load), never past a
    # listener; /proc/net/tcp says the same without binding (state 0A = LISTEN).
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A" and line.split()[1].endswith(f":{ui.port:04X}")
    ]
    assert listening == [], listening
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ui.port))
