"""A two-node Ray cluster on this machine, as two machines would run it: `ray start --head` and `ray start
--address` (2 CPUs each), each node with its own sweep4d cache; the worker node carries the resource
`second_node`. With `dashboard=True` the head also serves Ray's job server on 127.0.0.1 (`sweep run
--submit`). Used by tests/test_sweep.py (a sweep on S3) and tests/test_lab.py (the driver as a Ray Job)."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TwoNodes:
    address: str  # the head's GCS, for `sweep run --address`
    env: dict  # what the head node runs with, and so a driver on it
    dashboard: str | None  # the job server's URL, when started with one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_nodes(address: str, env: dict) -> int:
    count = [
        sys.executable,
        "-c",
        f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))",
    ]
    out = subprocess.run(count, env=env, capture_output=True, text=True).stdout.strip()
    return int(out.splitlines()[-1]) if out else 0


@contextmanager
def two_node_cluster(caches: Path, env: dict, dashboard: bool = False) -> Iterator[TwoNodes]:
    """Start both nodes with `env` (so a job's driver and the workers see it), wait until both are alive,
    yield, then SIGKILL each node's process group: a SIGTERMed worker node whose head is gone waited out
    a 30 s timeout, every run."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**env, "RAY_AUTH_MODE": "disabled"}
    port, dash_port = free_port(), free_port()
    common = ["--block", "--disable-usage-stats", "--num-cpus", "2"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    head_dashboard = (
        ["--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port)]
        if dashboard
        else ["--include-dashboard=false"]
    )
    head = [ray_bin, "start", "--head", "--port", str(port), "--ray-client-server-port", str(free_port())]
    head_env = {**env, "SWEEP4D_CACHE": str(caches / "head")}
    nodes = [subprocess.Popen([*head, *head_dashboard, *common], env=head_env, **quiet)]
    try:
        address = f"127.0.0.1:{port}"
        worker = [ray_bin, "start", "--address", address, "--resources", '{"second_node": 1}', *common]
        nodes.append(subprocess.Popen(worker, env={**env, "SWEEP4D_CACHE": str(caches / "worker")}, **quiet))
        deadline = time.time() + 180
        while alive_nodes(address, env) != 2:
            if time.time() > deadline:
                raise AssertionError("the two-node cluster did not come up in 180 s")
            time.sleep(1)
        yield TwoNodes(address, head_env, f"http://127.0.0.1:{dash_port}" if dashboard else None)
    finally:
        for p in reversed(nodes):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(30)
