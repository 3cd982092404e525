"""The paper cluster `sweep simulate` runs on: `NxGxKIND` (N nodes of G GPUs), `local` (this
machine as `sweep run` uses it: 2 CPUs, no GPU) or a small YAML file.

A YAML cluster names any field of `Cluster`, e.g.

    nodes: 16
    gpus_per_node: 8
    gpu: H100
    cores_per_node: 112
    storage_gb_s_per_node: 2.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from contracts.errors import UserError

# Dense bf16 peak FLOP/s per GPU and the CPU cores of the vendor's 8-GPU node (datasheets:
# NVIDIA H100/H200 SXM 989 TFLOP/s, DGX H100/H200 2x 56-core Xeon 8480C; A100 SXM 312 TFLOP/s,
# DGX A100 2x 64-core EPYC 7742; B200 2.25 PFLOP/s dense, DGX B200 2x 56-core Xeon 8570).
GPU_KINDS: dict[str, tuple[float, int]] = {
    "H100": (989e12, 112),
    "H200": (989e12, 112),
    "A100": (312e12, 128),
    "B200": (2250e12, 112),
}
# A CPU core's peak for this repository's CPU training (fp32 torch, gloo), set so that the default
# MFU 0.4 of it is the 4.4-7.9 (mean 5.7) GFLOP/s per core micro1-4 of sweeps/local_ladder.yaml
# reached (metrics.jsonl train/tflops, 2 workers, 2026-12-03, a loaded machine). `--calibrate`
# replaces it with measured step times.
CPU_CORE_FLOPS = 14e9


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu: str  # a GPU_KINDS key, or "none" for a CPU-only cluster
    cores_per_node: int
    peak_flops: float  # per GPU, or per core on a CPU-only cluster
    storage_gb_s_per_node: float = 2.0  # checkpoint write/read bandwidth, each node in parallel
    multi_node_efficiency: float = 0.9  # a rung spanning nodes runs at this fraction of its MFU
    restart_delay_s: float = 120.0  # a failed worker group: noticed, torn down, rescheduled
    startup_s: float = 90.0  # worker group start-up and engine build (ZeRO-3 init)
    eval_startup_s: float = 30.0  # an eval task: load the export, build the readout
    eval_gpus: int = 0  # GPUs (whole nodes' worth, taken from the last nodes) kept for evals only
    name: str = ""

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def cpu_only(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def cores_per_gpu(self) -> float:
        return self.cores_per_node / self.gpus_per_node if self.gpus_per_node else float(self.cores_per_node)

    def ray_nodes(self) -> list[dict]:
        """The nodes rungs can train on, as Ray would report their resources (eval-only nodes left out)."""
        if self.cpu_only:
            return [{"CPU": self.cores_per_node}] * self.nodes
        eval_nodes = -(-self.eval_gpus // self.gpus_per_node)
        return [{"CPU": self.cores_per_node, "GPU": self.gpus_per_node}] * (self.nodes - eval_nodes)

    def with_(self, **changes) -> Cluster:
        return replace(self, **changes)


def local_cluster() -> Cluster:
    """This machine as `sweep run` sees it: one node, 2 CPUs, no GPU; Ray starts faster here."""
    return Cluster(1, 0, "none", 2, CPU_CORE_FLOPS, startup_s=30.0, eval_startup_s=5.0, name="local")


def gpu_cluster(nodes: int, gpus_per_node: int, kind: str, **extra) -> Cluster:
    if kind not in GPU_KINDS:
        raise UserError(f"unknown GPU kind '{kind}'; known: {', '.join(GPU_KINDS)}")
    peak, cores = GPU_KINDS[kind]
    args = {"cores_per_node": cores, "peak_flops": peak, **extra}
    return Cluster(nodes, gpus_per_node, kind, name=f"{nodes}x{gpus_per_node}x{kind}", **args)


def parse_cluster(text: str) -> Cluster:
    """`128x8xH100`, `local`, or a YAML file's path."""
    if text == "local":
        return local_cluster()
    m = re.fullmatch(r"(\d+)x(\d+)x([A-Za-z0-9]+)", text)
    if m:
        nodes, per_node, kind = int(m[1]), int(m[2]), m[3].upper()
        if nodes < 1 or per_node < 1:
            raise UserError(f"cluster '{text}': nodes and GPUs per node must be at least 1")
        return gpu_cluster(nodes, per_node, kind)
    path = Path(text)
    if not path.is_file():
        raise UserError(f"--cluster '{text}' is not NxGxKIND (e.g. 128x8xH100), 'local', or a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    known = {f.name for f in fields(Cluster)} - {"name", "peak_flops"}
    if not isinstance(data, dict) or not {"nodes", "gpus_per_node", "gpu"} <= set(data):
        raise UserError(f"{path}: a cluster file needs nodes, gpus_per_node and gpu")
    unknown = set(data) - known
    if unknown:
        raise UserError(f"{path}: unknown cluster field(s) {', '.join(sorted(unknown))}")
    kind = str(data.pop("gpu")).upper()
    return replace(
        gpu_cluster(int(data.pop("nodes")), int(data.pop("gpus_per_node")), kind, **data), name=path.stem
    )
