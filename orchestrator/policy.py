"""The sweep's scheduling policy: state in, actions out. No Ray, no clock, no I/O.

Two executors call it with the state they observed and carry out what it returns:
- the Ray driver (orchestrator.scheduler) on a real cluster;
- the simulator (orchestrator.simulate) on a cluster that exists only on paper.

It decides which rungs to submit (the ladder's order, at most `max_concurrent` at a time), which
evals to submit and in what order, when an eval failure is retried, what a rerun skips or resumes,
and when the sweep is finished. Where a job then runs is the executor's business (Ray's
placement, or the simulator's).

An eval job evaluates one target (something with weights) on one (task, mode). A target today is
a rung's sealed checkpoint (`kind="checkpoint"`); to add a kind of eval job (e.g. a reference
model with no training), add its targets in `eval_targets` from what `SweepState` says about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from contracts.spec import RungConfig, SpecError, SweepSpec

REFERENCE = "reference"  # the eval-job kind of a reference model (EvalKey.kind)
EVAL_ATTEMPTS = 3  # per driver; a killed eval worker is one (Ray does not retry it behind our back)

# Rung states: pending -> running -> done | failed.
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
# An eval record's terminal states; anything else (absent, running left by a dead driver, retry,
# interrupted) may be submitted again.
TERMINAL_EVAL = ("done", "failed")


# ------------------------------------------------------------------ what to run


def select_rungs(spec: SweepSpec, only: list[str] | None) -> list[RungConfig]:
    """The ladder's rungs in its order, or the `--only` ones."""
    rungs = spec.rungs()
    if not only:
        return rungs
    names = {r.name for r in rungs}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise SpecError(
            f"--only names unknown rung(s) {', '.join(unknown)}; the ladder has: {', '.join(sorted(names))}"
        )
    return [r for r in rungs if r.name in only]


def eval_steps(spec: SweepSpec, rung: RungConfig, sealed: list[int]) -> list[int]:
    """Which of a rung's sealed checkpoint steps get evaluated."""
    which = spec.evals.checkpoints
    if which == "all":
        return sealed
    if which == "final":
        return [s for s in sealed if s == rung.steps]
    return [s for s in sealed if s in set(which)]


def rerun_action(trained: bool, sealed: list[int]) -> str:
    """What a (re)run does with a rung it finds on disk."""
    if trained:
        return "skip (trained)"
    if sealed:
        return f"resume from step {sealed[-1]}"
    return "train"


def initial_state(trained: bool) -> str:
    """A trained rung is skipped; any other starts pending (and resumes from its last checkpoint)."""
    return DONE if trained else PENDING


def retry_eval(attempts: int) -> bool:
    """After a failed attempt: try again, or record the eval as failed."""
    return attempts < EVAL_ATTEMPTS


# ------------------------------------------------------------------ resources


def bundle(rung: RungConfig) -> dict[str, float]:
    return {"CPU": rung.cpus_per_worker, **({"GPU": 1} if rung.gpus else {})}


def fits(nodes: list[dict], bundle: dict[str, float], count: int) -> bool:
    """Can `count` copies of `bundle` be placed on these nodes (their total resources)?"""
    placed = 0
    for res in nodes:
        placed += int(min((res.get(k, 0) // v) if v else float("inf") for k, v in bundle.items()))
    return placed >= count


def rungs_at_once(spec: SweepSpec, rungs: list[RungConfig], nodes: list[dict]) -> int:
    """The most rungs a fixed cluster could ever train at once: its slots for the smallest rung's worker
    over that rung's workers (at least 1, at most the ladder). Rungs beyond it wait in the driver rather
    than in Ray: a Ray Train fit waiting for its placement group is a controller and helper actors, each
    a process polling (the 2-core local ladder, its rungs submitted together: 933 s; one at a time: 766 s).
    An upper bound, so it never keeps a rung from a place it could have. An autoscaling cluster grows for
    pending work, so there every rung is submitted at once."""
    if spec.cluster.autoscaling or not rungs:
        return max(1, len(rungs))
    smallest = min(rungs, key=lambda r: (r.workers * sum(bundle(r).values()), r.workers))
    slots = sum(
        int(min((res.get(k, 0) // v) if v else float("inf") for k, v in bundle(smallest).items()))
        for res in nodes
    )
    return max(1, min(len(rungs), slots // smallest.workers))


def check_schedulable(spec: SweepSpec, rungs: list[RungConfig], nodes: list[dict]) -> list[str]:
    """Problems that no amount of waiting will solve, unless the cluster autoscales."""
    if spec.cluster.autoscaling:
        return []
    total = {k: sum(n.get(k, 0) for n in nodes) for k in ("CPU", "GPU")}
    have = f"the cluster has {total['CPU']:g} CPUs and {total['GPU']:g} GPUs on {len(nodes)} node(s)"
    problems = []
    for r in rungs:
        if not fits(nodes, bundle(r), r.workers):
            need = f"{r.workers} workers x {bundle(r)}"
            problems.append(
                f"rung {r.name} needs {need} but {have}; "
                "lower its gpus/cpu_workers or set cluster.autoscaling: true"
            )
    ev = spec.evals
    if ev.tasks and not fits(nodes, {"CPU": ev.cpus, **({"GPU": ev.gpus} if ev.gpus else {})}, 1):
        problems.append(
            f"an eval needs {ev.cpus} CPUs and {ev.gpus} GPUs on one node but {have}; lower evals.cpus/gpus"
        )
    return problems


# ------------------------------------------------------------------ the state


class EvalKey(NamedTuple):  # a tuple: cheap to make and hash, the policy makes many per decision
    """One eval job: a target's weights on one (task, mode). `owner` is the rung key for a checkpoint."""

    owner: str
    step: int
    task: str
    mode: str
    kind: str = "checkpoint"


@dataclass
class RungState:
    rung: RungConfig
    state: str = PENDING
    sealed: list[int] = field(default_factory=list)  # sealed checkpoint steps, ascending
    key: str = ""  # the rung's key, hashed once here rather than at every decision

    def __post_init__(self):
        self.key = self.key or self.rung.key


@dataclass
class SweepState:
    """What an executor observed. `evals`: the record state of each eval job it knows of (a missing
    key is an eval never tried); `in_flight`: the eval jobs running now."""

    spec: SweepSpec
    rungs: list[RungState]  # the ladder's order
    max_concurrent: int
    train_only: bool = False
    evals: dict[EvalKey, str] = field(default_factory=dict)
    in_flight: set[EvalKey] = field(default_factory=set)
    # Reference models (contracts.references): targets from the start, at step 0, never trained.
    references: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Actions:
    start_rungs: list[str]  # rung keys, in submission order
    submit_evals: list[EvalKey]  # in submission order
    finished: bool  # nothing runs and nothing is left to do


# ------------------------------------------------------------------ the decisions


def eval_targets(state: SweepState) -> list[tuple[str, str, int]]:
    """(kind, owner, step) of every target whose evals are wanted now, in submission order: the
    ladder's order, then checkpoint step."""
    if state.train_only:
        return []
    return [
        ("checkpoint", rs.key, s)
        for rs in state.rungs
        if rs.sealed
        for s in eval_steps(state.spec, rs.rung, rs.sealed)
    ] + [(REFERENCE, key, 0) for key in state.references]


def wanted_evals(state: SweepState) -> list[EvalKey]:
    ev = state.spec.evals
    tasks, modes = tuple(ev.tasks), tuple(ev.modes)
    frozen = tuple(m for m in modes if m == "frozen")  # a reference is never trained, finetuned neither
    return [
        k
        for kind, owner, step in eval_targets(state)
        for k in _jobs_of(kind, owner, step, tasks, frozen if kind == REFERENCE else modes)
    ]


@lru_cache(maxsize=65536)
def _jobs_of(kind: str, owner: str, step: int, tasks: tuple, modes: tuple) -> tuple[EvalKey, ...]:
    """A target's eval jobs, made once: a decision reads them for every sealed target each time."""
    return tuple(EvalKey(owner, step, t, m, kind) for t in tasks for m in modes)


def rungs_to_start(state: SweepState) -> list[str]:
    running = sum(rs.state == RUNNING for rs in state.rungs)
    pending = [rs.key for rs in state.rungs if rs.state == PENDING]
    return pending[: max(0, state.max_concurrent - running)]


def evals_to_submit(state: SweepState, wanted: list[EvalKey] | None = None) -> list[EvalKey]:
    """Every wanted eval not finished and not running. Ray (or the simulator) queues them for
    resources, in this order."""
    wanted = wanted_evals(state) if wanted is None else wanted
    return [k for k in wanted if state.evals.get(k) not in TERMINAL_EVAL and k not in state.in_flight]


def decide(state: SweepState) -> Actions:
    wanted = wanted_evals(state)
    start = rungs_to_start(state)
    submit = evals_to_submit(state, wanted)
    busy = bool(start or submit or state.in_flight) or any(
        rs.state in (PENDING, RUNNING) for rs in state.rungs
    )
    return Actions(start, submit, finished=not busy)


def eval_counts(state: SweepState, owner: str) -> tuple[int, int, int]:
    """(total, done, failed) of a rung's wanted evals."""
    mine = [k for k in wanted_evals(state) if k.owner == owner]
    done = sum(state.evals.get(k) == "done" for k in mine)
    failed = sum(state.evals.get(k) == "failed" for k in mine)
    return len(mine), done, failed
