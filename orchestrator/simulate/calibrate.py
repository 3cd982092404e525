"""`sweep simulate --calibrate RUN_DIR_OR_SPEC`: a finished sweep's measured durations in place of
the analytic ones, so that the simulation of a sweep that really ran can be compared with its wall
time.

Per rung, from its records (contracts.layout):
- start-up: rank 0's first record (workers/rank0.json `time`) less the moment the rung could have
  been placed, i.e. the later of its submission (status.json) and the end of the last job (a rung
  or an eval) that ended before it started. Exact where rungs run one at a time, as on a 2-core
  machine; an upper bound where several share a cluster.
- step time: the mean of batch / `train/clips_per_s` over metrics.jsonl;
- checkpoint save: what the training stretch (rank0 start to progress.json's last step) took
  beyond its steps, spread over its checkpoints; restore is taken to cost a save;
- the final stretch: the rung's end (status.json submitted + train_s) after its last step.
Per eval: the task's run time (`seconds`) plus its share of the wait between the rung's end and
its first eval's start. That start is `started` in records written since eval records carry it,
else the record file's modification time less `seconds` (older runs: a record is written when
the eval ends).
The driver's own start (imports, Ray, MLflow) is PROCESS_START_S plus sweep.json's
`driver_started` to the first submission, or DRIVER_START_S where the run predates that field;
its stop (reconcile, MLflow's finish, Ray's shutdown) is DRIVER_STOP_S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from contracts.errors import UserError
from contracts.layout import read_json, read_jsonl
from contracts.spec import RungConfig, SweepSpec, load_spec
from contracts.storage import runs_root
from orchestrator import checkpoint as ckpt
from orchestrator.simulate.costs import RungCost
from orchestrator.simulate.engine import Durations

# This machine, measured on the baseline run of sweeps/local_ladder.yaml (2026-12-03): from the
# command's start to sweep.json (imports, Ray's start, MLflow's runs) and from the last eval to
# the exit (reconcile, MLflow's finish, Ray's shutdown). Used where a run does not record them.
DRIVER_START_S = 25.0
DRIVER_STOP_S = 5.0
# Before the driver exists: Python imports the CLI and the driver's modules (torch, Ray, MLflow):
# 6.8 CPU seconds here (`python -c "import orchestrator.cli, orchestrator.scheduler"`).
PROCESS_START_S = 7.0


@dataclass(frozen=True)
class Measured:
    durations: Durations
    wall_s: float  # the run's first submission to its last job's end, plus the driver's start/stop
    rungs: int
    evals: int


def sweep_dir_of(target: str) -> Path:
    """A sweep directory (holding sweep.json), a runs root holding one, or a spec (its runs/<name>)."""
    path = Path(target)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        spec = load_spec(path)
        path = Path(str(runs_root(None, spec.storage))) / spec.name
    if not (path / "sweep.json").is_file():
        subs = [p for p in path.glob("*/sweep.json")] if path.is_dir() else []
        if len(subs) != 1:
            raise UserError(f"--calibrate {target}: not a finished sweep's directory (no sweep.json)")
        path = subs[0].parent
    return path


def _eval_start_end(path: Path, rec: dict) -> tuple[float, float]:
    if "started" in rec and "ended" in rec:
        return rec["ended"] - rec["seconds"], rec["ended"]
    end = path.stat().st_mtime  # older runs: the record is written when the eval ends
    return end - rec["seconds"], end


def measure(spec: SweepSpec, rungs: list[RungConfig], target: str, eval_slots: int) -> Measured:
    """eval_slots: how many evals ran side by side on the measured cluster."""
    sweep_dir = sweep_dir_of(target)
    sweep = read_json(sweep_dir / "sweep.json") or {}
    found: dict[str, dict] = {}  # run directory name (the rung key) -> what it measured
    for rung_dir in sorted(p for p in sweep_dir.iterdir() if (p / "info.json").is_file()):
        info, status = read_json(rung_dir / "info.json") or {}, read_json(rung_dir / "status.json") or {}
        rank0, progress = (
            read_json(rung_dir / "workers" / "rank0.json"),
            read_json(rung_dir / "progress.json"),
        )
        metrics = read_jsonl(rung_dir / "metrics.jsonl")
        rates = [m["train/clips_per_s"] for m in metrics if m.get("train/clips_per_s")]
        if status.get("state") != "done" or not (rank0 and progress and rates and "train_s" in status):
            continue
        config = info.get("config", {})
        evals = []
        for rec_path in sorted(rung_dir.glob("evals/step_*/*.json")):
            rec = read_json(rec_path) or {}
            if rec.get("state") == "done" and "seconds" in rec:
                start, end = _eval_start_end(rec_path, rec)
                task, mode = rec_path.stem.rsplit("-", 1)
                evals.append((task, mode, rec["seconds"], start, end))
        done = status["submitted"] + status["train_s"]
        found[rung_dir.name] = {
            "name": rung_dir.name.rsplit("-", 1)[0],
            "status": status,
            "rank0": rank0["time"],
            "last_step": progress["time"],
            "done": done,
            "step_s": mean(config.get("batch_size", 1) / r for r in rates),
            "steps": int(progress.get("step", 0)),
            "checkpoints": len(ckpt.list_steps(rung_dir)),
            "evals": evals,
        }
    if not found:
        raise UserError(f"--calibrate {target}: no finished rung in it")
    chosen = {}
    for r in rungs:  # the rung itself, else the latest finished rung of that name (another config)
        same = [m for m in found.values() if m["name"] == r.name]
        m = found.get(r.key) or max(same, key=lambda m: m["done"], default=None)
        if m is None:
            raise UserError(f"--calibrate {target}: the run has no finished rung '{r.name}'")
        chosen[r.key] = m
    return _durations(spec, rungs, sweep, chosen, eval_slots)


def _durations(spec, rungs, sweep, chosen, eval_slots) -> Measured:
    costs, evals = {}, {}
    # Every job's end, to find what freed the resources before a rung started.
    ends = [m["done"] for m in chosen.values()] + [e[4] for m in chosen.values() for e in m["evals"]]
    first_submit = min(m["status"]["submitted"] for m in chosen.values())
    last_end = max(ends)
    for r in rungs:
        m = chosen[r.key]
        freed = max([e for e in ends if e <= m["rank0"]] + [m["status"]["submitted"]])
        train = m["last_step"] - m["rank0"]
        step_s = min(m["step_s"], train / max(m["steps"], 1))
        save_s = (train - m["steps"] * step_s) / max(m["checkpoints"], 1)
        costs[r.key] = RungCost(
            startup_s=m["rank0"] - freed,
            step_s=step_s,
            compute_step_s=step_s,
            data_step_s=0.0,
            save_s=save_s,
            final_extra_s=max(0.0, m["done"] - m["last_step"]),
            restore_s=save_s,
        )
        if m["evals"]:
            wait = max(0.0, min(e[3] for e in m["evals"]) - m["done"]) * eval_slots
            for task, mode, seconds, _, _ in m["evals"]:
                evals[(r.key, task, mode)] = seconds + wait / len(m["evals"])
    for r in rungs:  # an eval the run did not do: the mean of that task's measured ones
        for t in spec.evals.tasks:
            for mode in spec.evals.modes:
                if (r.key, t, mode) not in evals:
                    same = [v for (k, tt, mm), v in evals.items() if tt == t and mm == mode]
                    evals[(r.key, t, mode)] = mean(same) if same else mean(evals.values() or [0.0])
    # sweep.json holds the latest driver's start: after a rerun it is later than the first
    # submission it must be measured against, so fall back to the measured default then.
    recorded = sweep.get("driver_started", math.inf) <= first_submit
    start = PROCESS_START_S + first_submit - sweep["driver_started"] if recorded else DRIVER_START_S
    wall = start + (last_end - first_submit) + DRIVER_STOP_S
    durations = Durations(costs, evals, overhead_s=start, stop_s=DRIVER_STOP_S)
    return Measured(durations, wall, len(chosen), sum(len(m["evals"]) for m in chosen.values()))
