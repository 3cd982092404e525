"""Where a command's CPU time goes, by kind of process: every process on the machine sampled twice a
second while the command runs, grouped by its Ray title (ray::RayTrainWorker, ray::Tracker, ...) or
what it runs.

    python benchmarks/cpu_by_process.py -- .venv/bin/pytest -q tests/test_chaos.py
    python benchmarks/cpu_by_process.py -- .venv/bin/sweep run sweeps/local_ladder.yaml --only micro1

Counts the CPU time each process spent during the command (one older than it counts from the first
sample): a process that lives under half a second can be missed. Ray workers take their
title (`ray::<actor or task>`) after they start; the last title seen is the one counted, so an eval
task's process that went back to the pool counts as ray::IDLE.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections import Counter

import psutil

KINDS = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "moto", "mlflow")


def kind(proc: psutil.Process) -> str | None:
    """A name for what the process is, or None when it is gone or unreadable."""
    try:
        argv = proc.cmdline()
        if not argv:  # a kernel thread
            return None
        line = " ".join(argv)
    except psutil.Error:
        return None
    if line.startswith("ray::"):
        return argv[0].split(".")[0]
    if "default_worker.py" in line:
        return "ray worker (starting)"
    if "-m orchestrator" in line or line.split()[0].endswith("/sweep"):
        return "sweep driver"
    if "pytest" in line.split()[0] or (len(argv) > 1 and "pytest" in argv[1]):
        return "pytest"
    return next((k for k in KINDS if k in line), line[:50])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    ap.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    first: dict[int, float] = {}  # pid -> its CPU seconds when first seen
    last: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds) when last seen
    start, began = time.perf_counter(), time.time()
    child = subprocess.Popen(command)
    while child.poll() is None:
        for proc in psutil.process_iter():
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            name = kind(proc)
            if name is None:
                continue
            cpu = t.user + t.system
            if proc.pid not in first:  # started since the command: counted from 0; older: from now
                try:
                    first[proc.pid] = 0.0 if proc.create_time() >= began else cpu
                except psutil.Error:
                    continue
            # A Ray worker's title replaces its first kind, then follows it; other kinds stay as first seen.
            keep = proc.pid in last and not name.startswith("ray::")
            last[proc.pid] = (last[proc.pid][0] if keep else name, cpu)
        time.sleep(args.every)
    wall = time.perf_counter() - start
    spent, count = Counter(), Counter()
    for pid, (title, cpu) in last.items():
        spent[title] += cpu - first[pid]
        count[title] += 1
    print(f"{' '.join(command)}: exit {child.returncode}, {wall:.1f} s wall")
    cpus = psutil.cpu_count()
    print(f"{sum(spent.values()):8.1f} CPU-s in all ({cpus} CPUs x the wall: {cpus * wall:.0f})")
    for title, cpu in spent.most_common():
        print(f"{cpu:8.1f} CPU-s  {count[title]:3d} process(es)  {title}")
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
