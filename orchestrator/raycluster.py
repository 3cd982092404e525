"""The Ray side of a sweep that is not the driver's loop: starting or joining the cluster, what its
nodes hold, and the eval task that runs on it (orchestrator.scheduler submits it).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from contracts.layout import EXPORT
from contracts.spec import Data, EvalData, Readout, SweepSpec
from contracts.storage import is_remote, local_copy, root_of
from evals.run import evaluate

# ------------------------------------------------------------------ the local cluster


def init_local_ray(num_cpus: int | None, runtime_env: dict, log_to_driver: bool = False) -> None:
    """A fresh Ray cluster on this machine ("local": never a `ray start` cluster it also runs, which
    a bare ray.init() would silently join), whose processes are told its address. Ray Train's
    placement-group cleaner finds the controller through the state API (the dashboard), at
    RAY_ADDRESS or else the last `ray start` cluster's address in /tmp/ray: a dead one cost every
    fit ~17 s of timeouts at its end; a live one would not know our controller and remove our
    placement group."""
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env_vars = {**runtime_env.get("env_vars", {}), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    before = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by ray.init when it starts the GCS
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,  # on 127.0.0.1, at 8265 or the next free port
            log_to_driver=log_to_driver,
            logging_level=logging.WARNING,
            runtime_env={**runtime_env, "env_vars": env_vars},
        )
    finally:
        if before is None:
            os.environ.pop("RAY_GCS_SERVER_PORT")
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = before


def alive_node_resources() -> list[dict]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def connect(spec: SweepSpec, address: str | None, num_cpus: int | None, say: Callable[[str], None]) -> None:
    """Join `--address` (or the spec's cluster.address), else start a local cluster."""
    import ray

    address = address or spec.cluster.address
    quiet = os.environ.get("SWEEP4D_WORKER_LOGS", "0") != "1"
    env = {
        "env_vars": {
            "PYTHONWARNINGS": "ignore",
            "RAY_TRAIN_V2_ENABLED": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    }
    if address:
        say(f"connecting to the Ray cluster at {address}")
        ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING, runtime_env=env)
    else:
        init_local_ray(num_cpus, env, log_to_driver=not quiet)
    res = ray.cluster_resources()
    say(f"Ray: {len(alive_node_resources())} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


# ------------------------------------------------------------------ eval task


def eval_task(
    export_path: str,
    task: str,
    mode: str,
    readout: dict,
    data: dict,
    threads: int,
    dataset: dict | None = None,
) -> dict:
    """Runs as a Ray task wherever resources allow. `dataset`: the task's evals.data entry
    (None: synthetic)."""
    import ray
    import torch

    torch.set_num_threads(max(1, threads))
    t0 = time.time()
    datasets, info = ({task: EvalData(**dataset)} if dataset else {}), {}
    checkpoint = root_of(export_path)
    if is_remote(checkpoint):  # streamed into this node's cache once, for every task that reads it
        export_path = str(local_copy(checkpoint / EXPORT))
    metrics = evaluate(
        export_path,
        task,
        mode=mode,
        readout=Readout(**readout),
        data=Data(**data),
        datasets=datasets,
        info=info,
    )
    return {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "seconds": time.time() - t0,
        "node_id": ray.get_runtime_context().get_node_id(),
        **info[task],
    }
