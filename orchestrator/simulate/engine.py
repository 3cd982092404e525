"""The discrete-event simulation of one sweep on a paper cluster, for one seed.

The policy (orchestrator.policy) decides, exactly as for the Ray driver: after every instant at
which something happened, the engine hands it the sweep's state and carries out its actions.
Submitted jobs wait for resources in submission order, a later one passing an earlier one that
does not fit yet (as Ray's scheduler lets it). A rung runs start-up, then checkpoint segments
(train to the next checkpoint step, save, seal); a failure, a Poisson process over its GPU-hours,
throws away the work since its last sealed checkpoint and restarts it after a restart delay, a
new start-up and a restore, until it has failed `max_failures` times more than once (then it
fails, as Ray Train's FailureConfig makes it). Evals are not failed: one GPU's failure rate over
an eval's minutes is negligible next to a rung's.

GPU-hours are counted three ways while the sweep runs: useful (work that was kept, evals
included), lost (work thrown away by failures, restart delays, the restarts' start-ups and
restores), and idle (integrated from the free GPUs between events). On a CPU-only cluster the
unit is a CPU.
"""

from __future__ import annotations

import heapq
import random
import time
from dataclasses import dataclass, field, replace

from contracts.spec import RungConfig, SweepSpec
from orchestrator import policy
from orchestrator.policy import DONE, FAILED, RUNNING, EvalKey, RungState, SweepState
from orchestrator.simulate.cluster import Cluster
from orchestrator.simulate.costs import RungCost


@dataclass(frozen=True)
class Durations:
    """Everything the engine needs to know about time: per rung key, and per (rung key, task, mode)."""

    rungs: dict[str, RungCost]
    evals: dict[tuple[str, str, str], float]
    overhead_s: float = 0.0  # the driver's own start (Ray, MLflow) before its first submission
    stop_s: float = 0.0  # and its own stop after the last job


@dataclass(frozen=True)
class Bar:
    """One stretch of a job on the cluster, for the Gantt chart."""

    lane: str  # rung key, or "evals"
    kind: str  # startup | train | restart | lost | eval
    start: float
    end: float
    units: int


@dataclass
class SimResult:
    makespan_s: float
    units: int  # GPUs (CPUs on a CPU-only cluster)
    useful_h: float
    lost_h: float
    idle_h: float
    interruptions: dict[str, int]
    finish_s: dict[str, float]
    failed: list[str]
    eval_lag_s: float  # the last eval's end after the last training step's
    decisions: int
    decide_s: float  # wall seconds spent in policy.decide
    bars: list[Bar] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (time, rung key)


@dataclass
class _Rung:
    key: str
    rung: RungConfig
    cost: RungCost
    units: int
    gen: int = 0  # bumped at each failure: events of an older attempt are stale
    nodes: list[int] = field(default_factory=list)  # one entry per unit held
    step: int = 0  # last sealed step
    mark: float = 0.0  # time since which the held units' work is not yet counted
    mark_lost: bool = False  # the stretch since `mark` is a restart's (lost even if it completes)
    failures: int = 0


class Engine:
    def __init__(
        self,
        spec: SweepSpec,
        rungs: list[RungConfig],
        cluster: Cluster,
        durations: Durations,
        *,
        failures_per_gpu_hour: float = 0.0,
        seed: int = 0,
        max_concurrent: int | None = None,
        train_only: bool = False,
        record: bool = False,
    ):
        self.spec, self.cluster, self.d = spec, cluster, durations
        self.rate = failures_per_gpu_hour
        self.random = random.Random(seed)
        self.record = record
        units = [cluster.gpus_per_node or cluster.cores_per_node] * cluster.nodes
        self.free_units, self.free_cpu = units, [cluster.cores_per_node] * cluster.nodes
        self.total_units = sum(units)
        eval_nodes = -(-cluster.eval_gpus // cluster.gpus_per_node) if cluster.eval_gpus else 0
        self.train_nodes = list(range(cluster.nodes - eval_nodes))
        self.eval_nodes = list(range(cluster.nodes - eval_nodes, cluster.nodes)) or self.train_nodes
        self.train_set, self.eval_set = set(self.train_nodes), set(self.eval_nodes)
        self.free_train = sum(units[n] for n in self.train_nodes)
        self.free_eval = sum(units[n] for n in self.eval_nodes)
        self.free_total = self.total_units
        keys = [r.key for r in rungs]
        self.rungs = {
            k: _Rung(k, r, durations.rungs[k], self._units(r)) for k, r in zip(keys, rungs, strict=True)
        }
        rung_states = [RungState(r, key=k) for k, r in zip(keys, rungs, strict=True)]
        # As the driver: by default as many rungs at once as the cluster can place (policy.rungs_at_once).
        at_once = max_concurrent or policy.rungs_at_once(spec, rungs, cluster.ray_nodes() or [{}])
        self.state = SweepState(spec, rung_states, at_once, train_only)
        self.by_key = {rs.key: rs for rs in self.state.rungs}
        self.eval_units = spec.evals.gpus if not cluster.cpu_only else spec.evals.cpus
        self._eval_cpus = (
            0.0 if cluster.cpu_only or not spec.evals.gpus else spec.evals.cpus / spec.evals.gpus
        )
        self.waiting_rungs: list[str] = []  # submitted, not placed, in submission order
        self.waiting_evals: list[EvalKey] = []
        self.eval_nodes_of: dict[EvalKey, int] = {}
        self.events: list[tuple[float, int, str, object, int]] = []
        self.seq = 0
        self.now = durations.overhead_s
        self.last_t = self.now
        self.useful = self.lost = self.idle = 0.0  # unit-seconds
        self.res = SimResult(0.0, self.total_units, 0, 0, 0, {k: 0 for k in self.rungs}, {}, [], 0.0, 0, 0.0)
        self.last_eval_end = 0.0

    # ------------------------------------------------------------ resources
    def _units(self, r: RungConfig) -> int:
        return r.workers * r.cpus_per_worker if self.cluster.cpu_only else r.gpus

    def _place(self, nodes: list[int], units: int, cpus_per_unit: float, one_node: bool) -> list[int] | None:
        """Nodes for `units` units (each with cpus_per_unit CPUs), packed onto as few nodes as can
        hold them, or None."""
        taken: list[int] = []
        for n in nodes:
            if not self.free_units[n]:
                continue
            per_cpu = int(self.free_cpu[n] // cpus_per_unit) if cpus_per_unit else units
            fit = min(self.free_units[n], per_cpu, units - len(taken))
            if one_node and fit < units:
                continue
            taken += [n] * fit
            if len(taken) == units:
                return taken
        return None

    def _take(self, nodes: list[int], cpus_per_unit: float, sign: int) -> None:
        for n in nodes:
            self.free_units[n] -= sign
            self.free_cpu[n] -= sign * cpus_per_unit
            self.free_train -= sign * (n in self.train_set)
            self.free_eval -= sign * (n in self.eval_set)
        self.free_total -= sign * len(nodes)

    def _try_place(self) -> None:
        """Place waiting evals, then waiting rungs, each in submission order, a later one passing an
        earlier one that does not fit yet. Evals first, as Ray does: a task takes freed CPUs or GPUs
        before a rung's placement group (a whole worker group's worth) gathers them."""
        self._place_evals()
        self._place_rungs()

    def _place_rungs(self) -> None:
        still = []
        for i, key in enumerate(self.waiting_rungs):
            if not self.free_train:
                still += self.waiting_rungs[i:]
                break
            r = self.rungs[key]
            cpus = self._rung_cpus(r)
            got = self._place(self.train_nodes, r.units, cpus, False) if self.free_train >= r.units else None
            if got is None:
                still.append(key)
                continue
            r.nodes = got
            self._take(got, cpus, +1)
            self._start_attempt(r, restart=False)
        self.waiting_rungs = still

    def _place_evals(self) -> None:
        still = []
        for i, job in enumerate(self.waiting_evals):
            got = []
            if self.eval_units:  # else it needs no GPU: CPUs of a GPU node, assumed free
                if self.free_eval < self.eval_units:
                    still += self.waiting_evals[i:]
                    break
                got = self._place(self.eval_nodes, self.eval_units, self._eval_cpus, True)
                if got is None:
                    still.append(job)
                    continue
            self._take(got, self._eval_cpus, +1)
            self.eval_nodes_of[job] = got
            seconds = self.d.evals[(job.owner, job.task, job.mode)]
            self.useful += seconds * len(got)
            self._bar("evals", "eval", self.now, self.now + seconds, len(got))
            self._push(self.now + seconds, "eval_end", job, 0)
        self.waiting_evals = still

    def _rung_cpus(self, r: _Rung) -> float:
        """CPUs per unit held: on a CPU-only cluster the unit is the CPU itself."""
        return 0.0 if self.cluster.cpu_only else r.rung.cpus_per_worker

    # ------------------------------------------------------------ events
    def _push(self, t: float, kind: str, what: object, gen: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, what, gen))

    def _bar(self, lane: str, kind: str, start: float, end: float, units: int) -> None:
        if self.record and end > start:
            self.res.bars.append(Bar(lane, kind, start, end, units))

    def _start_attempt(self, r: _Rung, restart: bool) -> None:
        c = r.cost
        ready = (
            (self.cluster.restart_delay_s if restart else 0.0)
            + c.startup_s
            + (c.restore_s if r.step else 0.0)
        )
        self._bar(r.key, "restart" if restart else "startup", self.now, self.now + ready, r.units)
        r.mark, r.mark_lost = self.now, restart
        self._push_segment(r, self.now + ready)
        if self.rate:
            mtbf_s = 3600.0 / (self.rate * r.units)
            self._push(self.now + self.random.expovariate(1.0 / mtbf_s), "fail", r.key, r.gen)

    def _push_segment(self, r: _Rung, t: float) -> None:
        """From time t, train to the next checkpoint step and seal it."""
        every, steps = r.rung.checkpoint_interval, r.rung.steps
        nxt = min((r.step // every + 1) * every, steps)
        save = r.cost.save_s + (r.cost.final_extra_s if nxt == steps else 0.0)
        self._push(t + (nxt - r.step) * r.cost.step_s + save, "seal", (r.key, nxt, t), r.gen)

    def _count(self, r: _Rung, upto: float, lost: bool) -> None:
        held = (upto - r.mark) * r.units
        if lost or r.mark_lost:
            self.lost += held
        else:
            self.useful += held
        r.mark, r.mark_lost = upto, False

    def _seal(self, key: str, step: int, train_from: float) -> None:
        r = self.rungs[key]
        if r.mark_lost:  # the restart's start-up and restore, up to training
            self._count(r, train_from, lost=True)
        self._bar(key, "train", train_from, self.now, r.units)
        self._count(r, self.now, lost=False)
        r.step = step
        self.by_key[key].sealed.append(step)
        if step < r.rung.steps:
            self._push_segment(r, self.now)
            return
        self.by_key[key].state = DONE
        r.gen += 1  # its pending failure is no longer one
        self._release(r)

    def _fail(self, key: str) -> None:
        r = self.rungs[key]
        self.res.interruptions[key] += 1
        self.res.failures.append((self.now, key))
        self._bar(key, "lost", r.mark, self.now, r.units)
        self._count(r, self.now, lost=True)
        r.gen += 1
        r.failures += 1
        if r.failures > r.rung.max_failures:
            self.by_key[key].state = FAILED
            self.res.failed.append(key)
            self._release(r)
        else:
            self._start_attempt(r, restart=True)

    def _release(self, r: _Rung) -> None:
        self._take(r.nodes, self._rung_cpus(r), -1)
        r.nodes = []
        self.res.finish_s[r.key] = self.now

    def _eval_end(self, key: EvalKey) -> None:
        self._take(self.eval_nodes_of.pop(key), self._eval_cpus, -1)
        self.state.evals[key] = "done"
        self.state.in_flight.discard(key)
        self.last_eval_end = self.now

    # ------------------------------------------------------------ the loop
    def next_actions(self) -> policy.Actions:
        """The policy's decision on the simulated sweep's state now."""
        t0 = time.perf_counter()
        actions = policy.decide(self.state)
        self.res.decide_s += time.perf_counter() - t0
        self.res.decisions += 1
        return actions

    def _decide(self) -> bool:
        actions = self.next_actions()
        for key in actions.start_rungs:
            self.by_key[key].state = RUNNING
            self.waiting_rungs.append(key)
        for key in actions.submit_evals:
            self.state.in_flight.add(key)
            self.waiting_evals.append(key)
        if actions.start_rungs or actions.submit_evals:
            self._try_place()
        return actions.finished

    def run(self) -> SimResult:
        finished = self._decide()
        while not finished:
            if not self.events:
                stuck = len(self.waiting_rungs) + len(self.waiting_evals)
                raise RuntimeError(f"the simulation stalled: {stuck} job(s) can never be placed")
            t = self.events[0][0]
            self.idle += self.free_total * (t - self.last_t)
            self.now = self.last_t = t
            while self.events and self.events[0][0] == t:
                _, _, kind, what, gen = heapq.heappop(self.events)
                if kind == "eval_end":
                    self._eval_end(what)
                elif self.rungs[what if kind == "fail" else what[0]].gen != gen:
                    continue  # an attempt a failure ended
                elif kind == "seal":
                    self._seal(*what)
                else:
                    self._fail(what)
            self._try_place()
            finished = self._decide()
        return self._result()

    def _result(self) -> SimResult:
        res = self.res
        res.makespan_s = self.now + self.d.stop_s
        # The driver's own start and stop: every unit idles.
        self.idle += self.total_units * (self.d.overhead_s + self.d.stop_s)
        res.useful_h, res.lost_h, res.idle_h = self.useful / 3600, self.lost / 3600, self.idle / 3600
        last_train = max(res.finish_s.values(), default=0.0)
        res.eval_lag_s = max(0.0, self.last_eval_end - last_train)
        return res


def with_gpus(rungs: list[RungConfig], gpus: dict[str, int]) -> list[RungConfig]:
    """The rungs with some GPU counts changed (a GPU rung has one worker per GPU)."""
    return [replace(r, gpus=gpus[r.key], workers=gpus[r.key]) if r.key in gpus else r for r in rungs]
