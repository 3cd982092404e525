"""The fixed cost of one Ray Train fit on this machine: a fit whose workers do nothing.

    python benchmarks/fit_overhead.py                     # 3 empty fits of 2 gloo workers
    python benchmarks/fit_overhead.py --fits 5 --workers 1
    python benchmarks/fit_overhead.py --no-preemption-watcher

Every rung of a sweep is one Ray Train fit (orchestrator.pretrain.fit_rung). Before the first step
of any rung, Ray Train V2 starts a controller, a worker group (one process per worker), and its
helper actors (a synchronisation actor, a placement-group cleaner, a preemption watcher, a dataset
manager), sets up torch.distributed over gloo, and tears it all down at the end. This measures that
cost with an empty training function, on a local cluster started as `sweep run` starts one
(orchestrator.raycluster.init_local_ray): wall seconds per fit, and the CPU-seconds the whole
machine spent meanwhile (/proc/stat, so every Ray process counts). It is the floor under every
integration test that trains a rung and under each rung's start-up in the local ladder.
"""

import argparse
import os
import time


def machine_cpu_seconds() -> float:
    """Busy CPU-seconds of the whole machine since boot (user + nice + system + irq + softirq)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return sum(int(v) for v in fields[1:4] + fields[6:8]) / os.sysconf("SC_CLK_TCK")


def empty_training(config: dict) -> None:
    """What each worker runs: nothing, so the fit's time is Ray Train's own."""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fits", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--no-preemption-watcher",
        action="store_true",
        help="RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0 and RAY_TRAIN_METRICS_ENABLED=0 (what they cost)",
    )
    args = ap.parse_args(argv)
    env = {"RAY_TRAIN_V2_ENABLED": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    if args.no_preemption_watcher:
        env |= {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}
    os.environ.update(env)  # the controller reads them from the driver's environment

    import tempfile

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.raycluster import init_local_ray

    init_local_ray(args.workers + 1, {"env_vars": env})
    with tempfile.TemporaryDirectory() as storage:
        for i in range(args.fits):
            wall, cpu = time.perf_counter(), machine_cpu_seconds()
            TorchTrainer(
                empty_training,
                scaling_config=ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": 1}),
                run_config=RunConfig(name=f"empty-{i}", storage_path=storage),
                torch_config=TorchConfig(backend="gloo"),
            ).fit()
            wall, cpu = time.perf_counter() - wall, machine_cpu_seconds() - cpu
            print(f"fit {i + 1}/{args.fits}: {wall:.1f} s wall, {cpu:.1f} CPU-s on the machine", flush=True)


if __name__ == "__main__":
    main()
