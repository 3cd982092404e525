"""`sweep simulate`: set up a simulation (spec, cluster, durations, failure rate), run it over
seeds, and sum the seeds up as P10/P50/P90.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import quantiles

from contracts.errors import UserError
from contracts.spec import RungConfig, SweepSpec, load_spec
from orchestrator.policy import check_schedulable, select_rungs
from orchestrator.simulate.calibrate import Measured, measure
from orchestrator.simulate.cluster import Cluster, parse_cluster
from orchestrator.simulate.costs import Assumptions, RungCost, eval_seconds, rung_cost
from orchestrator.simulate.engine import Durations, Engine, SimResult, with_gpus

# Llama 3 (Dubey et al. 2024, section 3.3.4): 419 unexpected interruptions over 54 days of
# pretraining on 16,384 H100s.
LLAMA3_PER_GPU_HOUR = 419 / (16384 * 54 * 24)


def failure_rate(text: str) -> float:
    """--failures none | llama3 | RATE (interruptions per GPU-hour)."""
    if text == "none":
        return 0.0
    if text == "llama3":
        return LLAMA3_PER_GPU_HOUR
    try:
        rate = float(text)
    except ValueError:
        raise UserError(
            f"--failures '{text}': give none, llama3 or a rate per GPU-hour (e.g. 2e-5)"
        ) from None
    if rate < 0:
        raise UserError(f"--failures {text}: a rate cannot be negative")
    return rate


def assumptions(text: str | None, decode: str = "auto") -> Assumptions:
    """--mfu 0.4, or a `sweep bench --json` file (each rung's own MFU where it has one); --decode."""
    if decode not in ("auto", "clips", "long", "none"):
        raise UserError(f"--decode {decode}: give auto, clips, long or none")
    return replace(_mfu(text), decode=decode)


def _mfu(text: str | None) -> Assumptions:
    if text is None:
        return Assumptions()
    try:
        value = float(text)
    except ValueError:
        path = Path(text)
        try:
            rows = json.loads(path.read_text())
            per_rung = {r["rung"]: float(r["mfu_datasheet"]) for r in rows if r.get("impl", "ours") == "ours"}
            per_rung = {k: v for k, v in per_rung.items() if v}
        except (OSError, ValueError, TypeError, KeyError):
            raise UserError(f"--mfu {text}: neither a number nor a `sweep bench --json` file") from None
        return Assumptions(mfu_per_rung=per_rung)
    if not 0 < value <= 1:
        raise UserError(f"--mfu {text}: an MFU is a fraction in (0, 1]")
    return Assumptions(mfu=value)


@dataclass
class Setup:
    spec: SweepSpec
    rungs: list[RungConfig]
    cluster: Cluster
    assume: Assumptions
    durations: Durations
    rate: float  # failures per GPU-hour
    measured: Measured | None = None
    max_concurrent: int | None = None
    gpus: dict[str, int] = field(default_factory=dict)  # rung key -> GPUs, where changed

    def costs(self) -> dict[str, RungCost]:
        return self.durations.rungs


def analytic_durations(
    spec: SweepSpec, rungs: list[RungConfig], cluster: Cluster, assume: Assumptions
) -> Durations:
    costs, evals = {}, {}
    for r in rungs:
        key = r.key  # a hash of the rung's identity: made once
        costs[key] = rung_cost(r, cluster, assume)
        for t in spec.evals.tasks:
            for m in spec.evals.modes:
                evals[(key, t, m)] = eval_seconds(spec, r, t, m, cluster, assume.mfu)
    return Durations(costs, evals)


def prepare(
    spec_path: Path,
    cluster_text: str,
    failures: str = "none",
    mfu: str | None = None,
    calibrate: str | None = None,
    only: list[str] | None = None,
    max_concurrent: int | None = None,
    decode: str = "auto",
) -> Setup:
    spec = load_spec(spec_path)
    rungs = select_rungs(spec, only)
    cluster = parse_cluster(cluster_text)
    rate, assume = failure_rate(failures), assumptions(mfu, decode)
    if cluster.cpu_only and any(r.gpus for r in rungs):
        raise UserError(f"cluster '{cluster.name}' has no GPUs but rung(s) of {spec.name} train on GPUs")
    check_fits(spec, rungs, cluster)
    measured = None
    if calibrate:
        slots = (
            cluster.gpus // max(spec.evals.gpus, 1)
            if not cluster.cpu_only
            else cluster.cores_per_node // spec.evals.cpus
        )
        measured = measure(spec, rungs, calibrate, max(slots, 1))
        durations = measured.durations
    else:
        durations = analytic_durations(spec, rungs, cluster, assume)
    return Setup(spec, rungs, cluster, assume, durations, rate, measured, max_concurrent)


def check_fits(spec: SweepSpec, rungs: list[RungConfig], cluster: Cluster) -> None:
    """The cluster's nodes, as Ray would see them; one line for what can never be placed."""
    problems = check_schedulable(
        spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"autoscaling": False})}),
        rungs,
        cluster.ray_nodes() or [{}],
    )
    if problems:
        raise UserError(f"cluster {cluster.name} is too small: {problems[0].split('; lower')[0]}")


def simulate_once(setup: Setup, seed: int, record: bool = False, **override) -> SimResult:
    rungs = with_gpus(setup.rungs, setup.gpus)
    engine = Engine(
        setup.spec,
        rungs,
        override.get("cluster", setup.cluster),
        override.get("durations", setup.durations),
        failures_per_gpu_hour=override.get("rate", setup.rate),
        seed=seed,
        max_concurrent=setup.max_concurrent,
        train_only=override.get("train_only", False),
        record=record,
    )
    return engine.run()


def run_seeds(setup: Setup, seeds: int, record_first: bool = True) -> list[SimResult]:
    return [simulate_once(setup, seed, record=record_first and seed == 0) for seed in range(seeds)]


def pct(values: list[float]) -> tuple[float, float, float]:
    """P10, P50, P90 (a single value: itself three times)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = quantiles(values, n=10, method="inclusive")
    return q[0], q[4], q[8]


@dataclass
class Summary:
    seeds: int
    units: int
    unit: str  # "GPU" or "CPU"
    makespan_s: tuple[float, float, float]
    useful_h: tuple[float, float, float]
    lost_h: tuple[float, float, float]
    idle_h: tuple[float, float, float]
    utilisation: tuple[float, float, float]
    eval_lag_s: tuple[float, float, float]
    interruptions: dict[str, tuple[float, float, float]]
    interruptions_mean: dict[str, float]  # the expected number, over seeds
    finish_s: dict[str, tuple[float, float, float]]
    failed_runs: int  # seeds in which some rung failed for good
    decisions: int
    decide_ms: float  # mean wall time of one policy decision


def summarize(results: list[SimResult], cluster: Cluster) -> Summary:
    keys = list(results[0].interruptions)
    decisions = sum(r.decisions for r in results)
    return Summary(
        seeds=len(results),
        units=results[0].units,
        unit="CPU" if cluster.cpu_only else "GPU",
        makespan_s=pct([r.makespan_s for r in results]),
        useful_h=pct([r.useful_h for r in results]),
        lost_h=pct([r.lost_h for r in results]),
        idle_h=pct([r.idle_h for r in results]),
        utilisation=pct([(r.useful_h + r.lost_h) / (r.units * r.makespan_s / 3600) for r in results]),
        eval_lag_s=pct([r.eval_lag_s for r in results]),
        interruptions={k: pct([float(r.interruptions[k]) for r in results]) for k in keys},
        interruptions_mean={k: sum(r.interruptions[k] for r in results) / len(results) for k in keys},
        finish_s={k: pct([r.finish_s.get(k, float("nan")) for r in results]) for k in keys},
        failed_runs=sum(bool(r.failed) for r in results),
        decisions=decisions,
        decide_ms=1e3 * sum(r.decide_s for r in results) / max(decisions, 1),
    )
