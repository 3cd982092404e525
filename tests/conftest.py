import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

os.environ.setdefault("PYTHONWARNINGS", "ignore")
# Ray gives its dashboard 60 s to start (read when `ray` is first imported, so set here, before any
# test imports it). In one CI run the dashboard of test_gpu_path_on_cpu's cluster spent 57 s listing
# its modules (0.4-1.4 s in every other start of that run) and the module's setup failed; this only
# makes a slow start wait longer, it changes nothing that is tested.
os.environ.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")

BUCKET = "sweep4d-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultyS3:
    """A proxy in front of the local S3 server that answers 403 to the next `times` PUTs whose path
    contains every fragment of a rule (403, not 5xx: the SDK does not retry it, so only sweep4d's
    own retries do)."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rules: dict[tuple[str, ...], int] = {}  # key fragments -> PUTs still to refuse
        self.refused: list[str] = []
        self.lock = threading.Lock()

    def fail(self, *fragments: str, times: int) -> None:
        with self.lock:
            self.rules[fragments] = times

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.refused.clear()

    def refuse(self, method: str, path: str) -> bool:
        with self.lock:
            for fragments, left in self.rules.items():
                if method == "PUT" and all(f in path for f in fragments) and left > 0:
                    self.rules[fragments] = left - 1
                    self.refused.append(path)
                    return True
        return False

    def handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = b""
                    while True:
                        line = self.rfile.readline()
                        raw += line
                        size = int(line.split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size + 2)
                        raw += chunk
                        if size == 0:
                            # trailers, then a blank line
                            while chunk not in (b"\r\n", b""):
                                chunk = self.rfile.readline()
                                raw += chunk
                            return raw
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _relay(self) -> None:
                body = self._body()
                if proxy.refuse(self.command, self.path):
                    msg = b"<Error><Code>AccessDenied</Code><Message>injected fault</Message></Error>"
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    conn.putheader(k, v)
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                # HEAD: the size of what a GET would return, as the server said
                length = resp.getheader("Content-Length") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A local S3-compatible server (moto) on 127.0.0.1 behind a fault-injecting proxy, with the
    standard AWS variables pointing at it for this process and every process started after (Ray)."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped whole at the end
    )
    faults = FaultyS3(port)
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), faults.handler())
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_address[1]}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "SWEEP4D_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deadline = time.time() + 30
    import boto3

    while True:
        try:
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.time() > deadline:
                os.killpg(server.pid, signal.SIGKILL)
                raise
            time.sleep(0.3)
    faults.bucket = BUCKET
    yield faults
    proxy.shutdown()
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """One real local Ray cluster for the integration tests of a session (started after the S3
    server, so its workers read the same AWS variables)."""
    import ray

    from orchestrator.scheduler import init_local_ray

    init_local_ray(4, {})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    """A lab's MLflow (tests/lab_server.py): PostgreSQL + `mlflow server` with basic auth, on 127.0.0.1."""
    import lab_server

    yield from lab_server.start(tmp_path_factory.mktemp("lab-server"))


# One mini sweep shared by tests/test_dashboard.py, tests/test_sweep_references.py and
# tests/test_sweep_evaldata.py (issue 28): each used to run its own `sweep run` + `sweep report` (~100 s
# apiece on 2 cores, mostly Ray and fit start-up). Its spec covers what all three check: a two-rung
# ladder evaluated at every checkpoint (the dashboard's metric history), two tiny transformers reference
# models (test_sweep_references) and box tracking read from a GOT-10k fixture (test_sweep_evaldata).
# The fixture also runs the rerun that must do nothing new, so no test mutates the store the others read
# (the dashboard's `sweep ui` only serves it), and the modules can run in any order, or alone.
MINI = "mini"
MINI_RUNGS = ("micro1", "micro2")
MINI_REFS = ("vmae", "dino")
MINI_TASKS = ("depth", "action", "box_tracking")
MINI_SPEC = """\
name: mini
data: {frames: 4, resolution: 16, tubelet: [2, 8, 8], world: {objects: 2, points: 8}}
pretraining:
  mask_ratio: 0.5
  decoder: {width: 16, depth: 1, mlp: 32, heads: 2}
  optimizer: {lr: 2.0e-3}
  schedule: {warmup_steps: 4}
  batch_size: 8
  steps: 16
  checkpoint_interval: 8
  cpu_workers: 1
ladder:
  - {name: micro1, width: 16, depth: 1, mlp: 32, heads: 2}
  # micro2 checkpoints once (step 16): micro1 alone shows metrics logged at every checkpoint's step
  - {name: micro2, width: 32, depth: 1, mlp: 64, heads: 2, checkpoint_interval: 16}
evals:
  tasks: [depth, action, box_tracking]
  checkpoints: all
  readout: {width: 16, heads: 2, epochs: 1, batch_size: 4, train_clips: 8, val_clips: 4, test_clips: 4}
  data:
    box_tracking: {format: got10k, path: ROOT/GOT-10k}
references:
  - {name: vmae, source: hf, id: ROOT/models/videomae}
  - {name: dino, source: hf, id: ROOT/models/dinov2}
"""
GOT10K_BOXES = [[30, 10, 20, 15]] * 6


def tiny_models(root):
    """A tiny VideoMAE (video) and DINOv2 (image) model saved to `root`: references with no network."""
    transformers = pytest.importorskip("transformers")
    small = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2)
    transformers.VideoMAEModel(
        transformers.VideoMAEConfig(
            image_size=16, patch_size=8, num_frames=4, tubelet_size=2, intermediate_size=32, **small
        )
    ).save_pretrained(root / "videomae")
    transformers.Dinov2Model(
        transformers.Dinov2Config(image_size=16, patch_size=8, mlp_ratio=2, **small)
    ).save_pretrained(root / "dinov2")


def write_got10k(root):
    """GOT-10k's layout: train/ and val/ sequence folders of 00000001.jpg ..., groundtruth.txt,
    absence.label."""
    import numpy as np
    from PIL import Image

    for split, n in (("train", 3), ("val", 1)):
        for k in range(n):
            seq = root / split / f"GOT-10k_{split}_{k + 1:06d}"
            seq.mkdir(parents=True)
            for t in range(6):
                Image.fromarray(np.full((40, 80, 3), 30 * t + k, np.uint8)).save(seq / f"{t + 1:08d}.jpg")
            boxes = "\n".join(",".join(map(str, b)) for b in GOT10K_BOXES)
            (seq / "groundtruth.txt").write_text(boxes + "\n")
            (seq / "absence.label").write_text("0\n" * 6)


@pytest.fixture(scope="session")
def mini_sweep(tmp_path_factory):
    """The shared mini sweep, finished and reported, then run again (the rerun's result is for
    test_sweep_references to check). Yields its directory (cwd of every command: runs/ and
    runs/mlflow.db are under it), the spec's path, the offline env, and the three commands' results."""
    root = tmp_path_factory.mktemp("mini-sweep")
    tiny_models(root / "models")
    write_got10k(root / "GOT-10k")
    spec = root / "spec.yaml"
    spec.write_text(MINI_SPEC.replace("ROOT", str(root)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    sweep = [sys.executable, "-m", "orchestrator"]
    # One rung trains at a time (evals beside it): two fits started together on 2 cores reach their
    # first step later than the two one after the other (measured on the LR grid test).
    cmd = [*sweep, "run", str(spec), "--num-cpus", "3", "--max-concurrent", "1"]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    report = subprocess.run(
        [*sweep, "report", str(spec), "--fit", "powerlaw", "--bootstrap", "20"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    again = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=900)
    return {"root": root, "spec": spec, "env": env, "run": run, "report": report, "again": again}
