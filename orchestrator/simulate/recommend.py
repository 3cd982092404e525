"""Recommendations from simulations, each with what it saves:
- a checkpoint interval per rung from Young/Daly, sqrt(2 C MTBF), the largest rung's checked
  against the interval a long simulated run of it loses least with;
- GPUs per rung that minimise the ladder's training makespan, by a coordinate search over the
  allowed counts (whole nodes, the batch divisible, ZeRO-3's memory within the GPU's);
- whether evals should have GPUs of their own, and how many GPUs each eval should get.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from contracts.cost import zero3_memory_per_gpu
from orchestrator.simulate.costs import rung_cost
from orchestrator.simulate.engine import Durations
from orchestrator.simulate.run import Setup, analytic_durations, simulate_once

GPU_MEMORY_GB = {"H100": 80, "H200": 141, "A100": 80, "B200": 180}
CHECK_MTBFS = 100  # a long run of the largest rung: this many of its MTBFs of work
CHECK_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


@dataclass(frozen=True)
class Interval:
    rung: str
    current_steps: int
    young_daly_steps: int | None  # None: no failures, so checkpoints only cost
    young_daly_s: float | None
    saves_gpu_h: float  # expected, over the rung, at the first-order overhead C/t + t/(2 MTBF)
    simulated_best_s: float | None = None  # the largest rung only


@dataclass(frozen=True)
class GpuChoice:
    rung: str
    current: int
    best: int


@dataclass(frozen=True)
class EvalOption:
    eval_gpus_each: int
    dedicated: int  # GPUs kept for evals only
    makespan_s: float
    eval_lag_s: float


@dataclass(frozen=True)
class Recommendations:
    intervals: list[Interval]
    gpus: list[GpuChoice]
    train_makespan_s: tuple[float, float]  # current GPU counts, recommended
    evals: list[EvalOption]


def overhead_rate(interval_s: float, save_s: float, mtbf_s: float) -> float:
    """First-order fraction of a rung's time spent saving and recomputing (Young 1974)."""
    return save_s / interval_s + interval_s / (2 * mtbf_s)


def young_daly(save_s: float, mtbf_s: float) -> float:
    return math.sqrt(2 * save_s * mtbf_s)


def checkpoint_intervals(setup: Setup) -> list[Interval]:
    out = []
    for r in setup.rungs:
        c = setup.durations.rungs[r.key]
        units = r.gpus or r.workers
        now_s = r.checkpoint_interval * c.step_s
        if not setup.rate or c.save_s <= 0:
            out.append(Interval(r.name, r.checkpoint_interval, None, None, 0.0))
            continue
        mtbf = 3600 / (setup.rate * units)
        tau = young_daly(c.save_s, mtbf)
        work_s = r.steps * c.step_s
        saves = (
            (overhead_rate(now_s, c.save_s, mtbf) - overhead_rate(tau, c.save_s, mtbf))
            * work_s
            * units
            / 3600
        )
        out.append(Interval(r.name, r.checkpoint_interval, max(1, round(tau / c.step_s)), tau, saves))
    return out


def simulated_best_interval(setup: Setup, rung_name: str, seeds: int = 3) -> float | None:
    """The checkpoint interval (s) a long run of this rung alone loses least with, on a grid around
    Young/Daly's (failures without limit, no evals)."""
    r = next(x for x in setup.rungs if x.name == rung_name)
    c = setup.durations.rungs[r.key]
    if not setup.rate or c.save_s <= 0:
        return None
    mtbf = 3600 / (setup.rate * (r.gpus or r.workers))
    tau = young_daly(c.save_s, mtbf)
    steps = max(1, round(CHECK_MTBFS * mtbf / c.step_s))
    best = None
    for f in CHECK_FACTORS:
        every = max(1, round(f * tau / c.step_s))
        long_run = replace(r, steps=steps, checkpoint_interval=every, max_failures=10**9)
        trial = replace(setup, rungs=[long_run], gpus={}, durations=Durations({long_run.key: c}, {}))
        span = sum(simulate_once(trial, seed, train_only=True).makespan_s for seed in range(seeds))
        if best is None or span < best[0]:
            best = (span, every * c.step_s)
    return best[1]


def _allowed(setup: Setup, rung) -> list[int]:
    cl = setup.cluster
    mem = GPU_MEMORY_GB.get(cl.gpu, 80) * 1e9 * 0.9
    train_gpus = cl.gpus - cl.eval_gpus
    counts = []
    g = cl.gpus_per_node
    while g <= train_gpus:
        m = zero3_memory_per_gpu(rung.model, g, max(1, rung.batch_size // g), activation_checkpointing=True)
        if rung.batch_size % g == 0 and m.total <= mem:
            counts.append(g)
        g *= 2
    return counts or [rung.gpus]


def gpu_counts(setup: Setup) -> tuple[list[GpuChoice], tuple[float, float]]:
    """Coordinate search, largest rung first, on the training makespan without failures."""
    if setup.cluster.cpu_only:
        return [], (0.0, 0.0)

    def makespan(gpus: dict[str, int]) -> float:
        rungs = [replace(r, gpus=gpus[r.key], workers=gpus[r.key]) for r in setup.rungs]
        costs = {r.key: rung_cost(r, setup.cluster, setup.assume) for r in rungs}
        trial = replace(setup, rungs=rungs, gpus={}, durations=Durations(costs, setup.durations.evals))
        return simulate_once(trial, 0, rate=0.0, train_only=True).makespan_s

    # One count per ladder size: an LR grid's points of a size share it.
    groups: dict[str, list] = {}
    for r in setup.rungs:
        groups.setdefault(r.search_of or r.name, []).append(r)
    current = {name: rs[0].gpus for name, rs in groups.items()}

    def per_rung(counts: dict[str, int]) -> dict[str, int]:
        return {r.key: counts[name] for name, rs in groups.items() for r in rs}

    best, best_span = dict(current), makespan(per_rung(current))
    start_span = best_span
    for name in sorted(groups, key=lambda n: -groups[n][0].total_params):
        for g in _allowed(setup, groups[name][0]):
            if g == best[name]:
                continue
            span = makespan(per_rung({**best, name: g}))
            if span < best_span - 1e-6:
                best, best_span = {**best, name: g}, span
    choices = [GpuChoice(name, current[name], best[name]) for name in groups]
    return choices, (start_span, best_span)


def eval_options(setup: Setup) -> list[EvalOption]:
    """Evals sharing the cluster or on GPUs of their own, with 1 or 8 GPUs per eval (no failures)."""
    if setup.cluster.cpu_only or not setup.spec.evals.tasks:
        return []
    out = []
    per_node = setup.cluster.gpus_per_node
    for each in sorted({max(1, setup.spec.evals.gpus), per_node}):
        spec = setup.spec.model_copy(update={"evals": setup.spec.evals.model_copy(update={"gpus": each})})
        for dedicated in (0, 8 * per_node):
            cluster = setup.cluster.with_(eval_gpus=dedicated)
            trial = replace(setup, spec=spec, cluster=cluster)
            durations = analytic_durations(spec, setup.rungs, cluster, setup.assume)
            res = simulate_once(trial, 0, rate=0.0, cluster=cluster, durations=durations)
            out.append(EvalOption(each, dedicated, res.makespan_s, res.eval_lag_s))
    return out


def recommend(setup: Setup) -> Recommendations:
    intervals = checkpoint_intervals(setup)
    if setup.rate and setup.rungs:
        largest = max(
            setup.rungs, key=lambda r: (r.gpus or r.workers) * r.steps * setup.durations.rungs[r.key].step_s
        )
        i = next(k for k, x in enumerate(intervals) if x.rung == largest.name)
        intervals[i] = replace(intervals[i], simulated_best_s=simulated_best_interval(setup, largest.name))
    gpus, spans = gpu_counts(setup)
    return Recommendations(intervals, gpus, spans, eval_options(setup))
