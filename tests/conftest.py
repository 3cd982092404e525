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
