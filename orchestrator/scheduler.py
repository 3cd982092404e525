"""`sweep run`: the driver. One loop owns the sweep's state and, in this order:

1. resolves the spec into rungs and reads what has already run from disk;
2. connects to Ray (a local cluster, or `--address`) and checks every rung and eval
   can ever be placed, before launching anything;
3. opens the sweep's MLflow runs through one tracker actor on the driver's node;
4. trains rungs (each a Ray Train run, see orchestrator.pretrain) as resources allow;
5. whenever a rung seals a checkpoint, submits one eval task per (task, mode);
6. records every outcome on disk and in MLflow, and prints a summary.
Each tick observes, asks orchestrator.policy what to do (as `sweep simulate` does), and does it.

Re-running skips finished rungs and evals, resumes partial rungs, and reuses runs.

Nothing is lost when a process dies: every metric is on disk before it is sent to MLflow,
and MLflow is reconciled against the disk (orchestrator.reconcile) when the driver starts,
when the tracker actor was restarted (Ray restarts it; the driver sees a new incarnation)
and when the driver stops. Ctrl-C and SIGTERM take one path: cancel evals, stop the fits
(orchestrator.training.stop), flush the tracker, reconcile, exit.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.layout import RungPaths, SweepPaths, read_json, read_jsonl, write_json
from contracts.names import FAILURE_TAG
from contracts.spec import RungConfig, SpecError, SweepSpec, load_spec
from contracts.storage import check_reachable, runs_root
from orchestrator import checkpoint as ckpt
from orchestrator import policy, references
from orchestrator.policy import EvalKey, RungState, SweepState, check_schedulable, eval_steps, select_rungs  # noqa: F401  (check_schedulable, eval_steps: their old home)
from orchestrator.pretrain import RungOutcome, fit_rung
from orchestrator.progress import restart_line
from orchestrator.raycluster import alive_node_resources, connect, eval_task, init_local_ray  # noqa: F401  (init_local_ray: its old home; tests import it here)
from orchestrator.reconcile import reconcile_runs
from orchestrator.state import SweepLock
from orchestrator.status import describe_rerun, live_row, restart_count
from orchestrator.sweep_tracking import log_eval, open_tracking
from orchestrator.tracking import absolute_tracking_uri, check_tracking
from orchestrator.training.stop import new_stop_flag, stop_fits

TICK_S = 1.0


@dataclass
class EvalJob:
    rung: RungConfig
    step: int
    task: str
    mode: str
    attempts: int = 0
    ref: object = None
    started: float = 0.0


@dataclass
class RungRun:
    rung: RungConfig
    run_id: str
    state: str = "pending"  # pending | running | done | failed
    thread: threading.Thread | None = None
    outcome: RungOutcome | None = None
    submitted: float = 0.0
    reason: str | None = None
    evals_total: int = 0
    evals_done: int = 0
    evals_failed: int = 0
    failures: list[str] = field(default_factory=list)
    restarts_seen: int = 0  # lines of restarts.jsonl already announced


# ------------------------------------------------------------------ the driver


class Sweep:
    def __init__(
        self,
        spec: SweepSpec,
        spec_path: Path,
        rungs: list[RungConfig],
        root: Path | str,
        *,
        train_only: bool = False,
        max_concurrent: int | None = None,
        report: Callable[[str], None] = print,
    ):
        self.spec, self.spec_path, self.rungs = spec, spec_path, rungs
        self.root = runs_root(root)  # a directory, or a store (contracts.storage)
        self.paths = SweepPaths.of(self.root, spec.name)
        self.train_only = train_only or not spec.evals.tasks
        self.max_concurrent = max_concurrent  # None: as many as the cluster can place (run)
        self.say = report
        self.lock = SweepLock(self.paths.lock)
        self.runs: dict[str, RungRun] = {}
        self.jobs: dict[EvalKey, EvalJob] = {}
        self.started = time.time()
        self.stop_signal: str | None = None  # "SIGTERM" when a kill, not Ctrl-C, stopped the sweep
        self.stop_flag = None  # set on Ctrl-C or SIGTERM: the fits leave their loops (training.stop)
        self.references = references.ReferenceEvals(spec, self.root, lambda ln: self.say(ln), self.train_only)

    # -------------------------------------------------------- before Ray
    def preflight(self) -> None:
        references.preflight(self.spec, self.say)  # first: a model not at hand touches nothing
        check_reachable(self.root, write=True)
        check_tracking(absolute_tracking_uri(self.spec.tracking.uri))  # a server answers, takes our login
        if mismatched := [m for r in self.rungs if (m := ckpt.resumed_with_other_workers(r, self.root))]:
            raise SpecError("\n".join(mismatched))
        holder = self.lock.holder()
        if holder:
            raise SpecError(
                f"sweep '{self.spec.name}' is already running (pid {holder['pid']} on {holder['host']}); "
                f"wait for it or stop it first"
            )

    def describe(self) -> list[dict]:
        """What a run would do, from disk alone (used by --dry-run and status)."""
        return describe_rerun(self.spec, self.rungs, self.root)

    # -------------------------------------------------------- the run
    def run(self, address: str | None, num_cpus: int | None = None, display=None) -> int:
        import ray

        started_ray = not ray.is_initialized()
        if started_ray:
            connect(self.spec, address, num_cpus, self.say)
        try:
            nodes = alive_node_resources()
            problems = check_schedulable(self.spec, self.rungs, nodes)
            if problems:
                raise SpecError(
                    "this sweep can never be scheduled on this cluster:\n  " + "\n  ".join(problems)
                )
            if self.max_concurrent is None:
                self.max_concurrent = policy.rungs_at_once(self.spec, self.rungs, nodes)
            self.lock.acquire()
            previous = self._on_sigterm()
            try:
                self.stop_flag = new_stop_flag()
                self._open_tracking()
                self.reconcile()  # what a crash of the last driver kept from MLflow
                return self._loop(display)
            except KeyboardInterrupt:  # before the loop started, or a second Ctrl-C while flushing
                by = "SIGTERM" if self.stop_signal else "the user"
                self.say(f"interrupted by {by}; the next run reconciles MLflow with the disk")
                return 143 if self.stop_signal else 130
            except Exception:
                # Said now: once Ray shuts down, a rung thread still inside Ray Train makes Ray's core
                # worker end the process (exit 1) before this exception would reach the terminal.
                self.say(
                    f"the sweep driver failed; rungs resume from their last checkpoint next time:\n"
                    f"{traceback.format_exc()}"
                )
                raise
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
                self.lock.release()
        finally:
            # Object refs and actor handles freed after ray.shutdown make Ray's core worker end the
            # process with exit 1 (seen after a SIGTERM flush): drop them while Ray is still up.
            for job in self.jobs.values():
                job.ref = None
            self.references.drop_handles()
            self.tracker = self.stop_flag = None
            if started_ray:
                ray.shutdown()

    def _on_sigterm(self):
        """SIGTERM (a `kill`, a cluster manager) takes Ctrl-C's path, which flushes the tracker.
        Installed after ray.init, whose own handler would exit without flushing."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self.stop_signal = "SIGTERM"
            raise KeyboardInterrupt

        return signal.signal(signal.SIGTERM, handler)

    def reconcile(self, keys: list[str] | None = None) -> dict:
        """Make each rung's MLflow run hold exactly its disk record (orchestrator.reconcile)."""
        import ray

        runs = {
            k: (RungPaths.for_rung(rr.rung, self.root), rr.run_id)
            for k, rr in self.runs.items()
            if keys is None or k in keys
        } | self.references.runs_to_reconcile(keys)

        def reconciler(run_id, points):
            return ray.get(self.tracker.reconcile.remote(run_id, points))

        return reconcile_runs(runs, reconciler, self.say)

    def _watch_tracker(self) -> None:
        """Ray restarts a killed tracker actor, which lost its buffer: refill MLflow from disk."""
        import ray

        incarnation = ray.get(self.tracker.ping.remote())
        if incarnation != self.tracker_incarnation:
            self.say("the tracker actor was restarted; reconciling MLflow with the disk")
            self.tracker_incarnation = incarnation
            self.reconcile()

    def _open_tracking(self) -> None:
        opened = open_tracking(self.spec, self.spec_path, self.rungs, self.root, self.paths, self.started)
        self.tracker, self.tracker_incarnation, self.parent = (
            opened.tracker,
            opened.incarnation,
            opened.parent,
        )
        self.runs = {r.key: RungRun(r, opened.run_ids[r.key]) for r in self.rungs}
        self.references.open_runs(self.tracker, self.parent)

    # -------------------------------------------------------- the loop: observe, decide, act
    def _loop(self, display) -> int:
        import ray

        for rr in self.runs.values():
            rr.state = policy.initial_state(ckpt.is_trained(rr.rung, self.root))
            self._status(rr)  # pending too: a status.json left "running" by a killed driver is stale
        try:
            while True:
                self.lock.beat()
                self._watch_tracker()
                for rr in self.runs.values():
                    if rr.state == "running":
                        self._announce_restarts(rr)
                        if not rr.thread.is_alive():
                            self._finish_rung(rr)
                if not self.train_only:
                    self._collect_evals(ray)
                state, unlogged = self._observe()
                for key, rec, path in unlogged:  # the driver died between recording and logging
                    log_eval(
                        self.tracker, self.runs[key.owner].run_id, key.step, key.task, key.mode, rec, path
                    )
                actions = policy.decide(state)
                for key in actions.start_rungs:
                    self._start_rung(self.runs[key])
                self._submit_evals(self.references.tick(ray, self.tracker, actions.submit_evals))
                self._count_evals(state)
                if display:
                    display(self.snapshot())
                if actions.finished:
                    break
                time.sleep(TICK_S)
            return self._close()  # inside the try: a kill while closing flushes and says so too
        except KeyboardInterrupt:
            return self._interrupted(ray)

    def _interrupted(self, ray) -> int:
        """Ctrl-C or SIGTERM: cancel evals, mark running rungs, flush and reconcile MLflow."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second kill must not cut the flush short
        by = "SIGTERM" if self.stop_signal else "the user"
        self.say(
            f"interrupted by {by}: stopping launches, cancelling evals, flushing MLflow; "
            "rungs resume from their last checkpoint next time"
        )
        for job in self.jobs.values():
            if job.ref is not None:
                ray.cancel(job.ref, force=True)
                path = RungPaths.for_rung(job.rung, self.root).eval_record(job.step, job.task, job.mode)
                write_json(path, {**(read_json(path) or {}), "state": "interrupted"})
        self.references.interrupt(ray)
        stop_fits(ray, self.stop_flag, [rr.thread for rr in self.runs.values() if rr.state == "running"])
        for rr in self.runs.values():  # their fits stopped: what they wrote is final until the next run
            if rr.state == "running":
                rr.state, rr.reason = "interrupted", f"interrupted by {by}"
                self._status(rr)
        ray.get(self.tracker.flush.remote())
        self.reconcile()  # points a worker wrote to disk but had not sent yet
        return 143 if self.stop_signal else 130

    def _start_rung(self, rr: RungRun) -> None:
        rr.state, rr.submitted = "running", time.time()
        rr.restarts_seen = restart_count(RungPaths.for_rung(rr.rung, self.root))  # earlier runs' restarts
        self._status(rr)

        def target():
            try:
                rr.outcome = fit_rung(rr.rung, self.root, self.tracker, rr.run_id, self.stop_flag)
            except Exception as e:  # never let one rung take the driver down
                rr.outcome = RungOutcome(rr.rung.key, False, 0, f"{type(e).__name__}: {e}")

        rr.thread = threading.Thread(target=target, name=f"rung-{rr.rung.key}", daemon=True)
        rr.thread.start()
        self.say(f"[{rr.rung.key}] submitted ({rr.rung.workers} workers, {rr.rung.steps} steps)")

    def _announce_restarts(self, rr: RungRun) -> None:
        """Print the worker-group restarts rank 0 recorded since the last tick."""
        restarts = read_jsonl(RungPaths.for_rung(rr.rung, self.root).restarts)
        for rec in restarts[rr.restarts_seen :]:
            self.say(restart_line(rr.rung.key, rec))
        rr.restarts_seen = max(rr.restarts_seen, len(restarts))

    def _finish_rung(self, rr: RungRun) -> None:
        self._announce_restarts(rr)  # one recorded in the last tick
        o = rr.outcome
        paths = RungPaths.for_rung(rr.rung, self.root)
        resume = read_json(paths.resume) or {}
        for w in resume.get("warnings", []):
            self.say(f"[{rr.rung.key}] WARNING {w}")
        if o and o.ok:
            rr.state = "done"
            self.say(f"[{rr.rung.key}] trained to step {o.step}")
        else:
            rr.state, rr.reason = "failed", (o.reason if o else "unknown")
            self.say(f"[{rr.rung.key}] FAILED: {rr.reason}")
        self._status(rr)

    def _status(self, rr: RungRun) -> None:
        paths = RungPaths.for_rung(rr.rung, self.root)
        old = read_json(paths.status) or {}
        rank0 = read_json(paths.worker(0)) or {}
        rec = {**old, "state": rr.state, "reason": rr.reason, "updated": time.time(), "steps": rr.rung.steps}
        if rr.submitted:
            rec["submitted"] = rr.submitted
            if rank0.get("time", 0) >= rr.submitted:
                rec["wait_s"] = rank0["time"] - rr.submitted
        if rr.state in ("done", "failed") and rr.submitted:
            rec["train_s"] = time.time() - rr.submitted
        write_json(paths.status, rec)

    # -------------------------------------------------------- evals
    def _observe(self) -> tuple[SweepState, list[tuple[EvalKey, dict, Path]]]:
        """The policy's view of the sweep, from this driver's rungs and the records on disk; and the
        done evals whose metrics MLflow may not hold yet."""
        state = SweepState(
            self.spec, [], self.max_concurrent, self.train_only, references=self.references.keys
        )
        for key, rr in self.runs.items():
            sealed = [] if self.train_only else [f.step for f in ckpt.list_steps(self._paths(rr.rung).root)]
            state.rungs.append(RungState(rr.rung, rr.state, sealed, key=key))
        unlogged = []
        for key in policy.wanted_evals(state):
            path = self._record(key)
            rec = read_json(path) or {}
            if "state" in rec:
                state.evals[key] = rec["state"]
            if rec.get("state") == "done" and not rec.get("logged") and key.kind != policy.REFERENCE:
                unlogged.append((key, rec, path))  # (a reference's: orchestrator.references logs it)
        state.in_flight = {k for k, job in self.jobs.items() if job.ref is not None}
        state.in_flight |= self.references.in_flight()
        return state, unlogged

    def _paths(self, rung: RungConfig) -> RungPaths:
        return RungPaths.for_rung(rung, self.root)

    def _record(self, key: EvalKey) -> Path:
        if key.kind == policy.REFERENCE:
            return self.references.record(key)
        return self._paths(self.runs[key.owner].rung).eval_record(key.step, key.task, key.mode)

    def _submit_evals(self, keys: list[EvalKey]) -> None:
        if not keys:
            return
        import ray

        ev = self.spec.evals
        # No retries inside Ray: every attempt is the driver's, so each is counted on disk.
        remote = ray.remote(eval_task).options(num_cpus=ev.cpus, num_gpus=ev.gpus, max_retries=0)
        for key in keys:
            rung, step, task, mode = self.runs[key.owner].rung, key.step, key.task, key.mode
            path = self._paths(rung).eval_record(step, task, mode)
            rec = read_json(path) or {}
            job = self.jobs.setdefault(key, EvalJob(rung, step, task, mode))
            on_disk = ev.data[task].model_dump() if task in ev.data else None
            job.ref = remote.remote(
                str(self._paths(rung).checkpoint(step)),
                task,
                mode,
                ev.readout_for(task).model_dump(),
                self.spec.data.model_dump(),
                ev.cpus,
                on_disk,
            )
            job.attempts += 1
            job.started = time.time()
            # attempts: this driver's tries (the retry budget); starts: every start, across drivers
            # (a killed driver's "running" record counts), so a readout trained twice shows.
            write_json(
                path,
                {
                    "state": "running",
                    "attempts": job.attempts,
                    "starts": rec.get("starts", 0) + 1,
                    "started": job.started,
                },
            )

    def _count_evals(self, state: SweepState) -> None:
        """Eval counts per rung, from the records on disk (the source of truth)."""
        for rr in self.runs.values():
            rr.evals_total, rr.evals_done, rr.evals_failed = policy.eval_counts(state, rr.rung.key)

    def _collect_evals(self, ray) -> None:
        live = {job.ref: job for job in self.jobs.values() if job.ref is not None}
        if not live:
            return
        ready, _ = ray.wait(list(live), num_returns=len(live), timeout=0)
        for ref in ready:
            job = live[ref]
            job.ref = None
            rr = self.runs[job.rung.key]
            path = RungPaths.for_rung(job.rung, self.root).eval_record(job.step, job.task, job.mode)
            starts = (read_json(path) or {}).get("starts", job.attempts)
            try:
                result = ray.get(ref)
            except Exception as e:
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                if policy.retry_eval(job.attempts):
                    self.say(
                        f"[{job.rung.key}] eval {job.task}/{job.mode} at step {job.step} "
                        f"failed ({reason}); retrying"
                    )
                    write_json(
                        path, {"state": "retry", "attempts": job.attempts, "starts": starts, "reason": reason}
                    )
                else:
                    self.say(
                        f"[{job.rung.key}] eval {job.task}/{job.mode} at step {job.step} FAILED: {reason}"
                    )
                    write_json(
                        path,
                        {"state": "failed", "attempts": job.attempts, "starts": starts, "reason": reason},
                    )
                    rr.failures.append(f"{job.task}/{job.mode}@{job.step}: {reason}")
                continue
            # started/ended: when the driver submitted it and saw it finish (queueing included), for
            # `sweep simulate --calibrate`; `seconds` is the task's own run time.
            times = {"started": job.started, "ended": time.time()}
            rec = {
                "state": "done",
                "attempts": job.attempts,
                "starts": starts,
                "logged": False,
                **times,
                **result,
            }
            write_json(path, rec)
            log_eval(self.tracker, rr.run_id, job.step, job.task, job.mode, rec, path)

    # -------------------------------------------------------- the end
    def _close(self) -> int:
        import ray

        self.reconcile()  # points written to disk by workers that exited before sending them
        for rr in self.runs.values():
            failed = rr.state == "failed"
            tags = {FAILURE_TAG: rr.reason} if failed else {}
            ray.get(self.tracker.finish.remote(rr.run_id, "FAILED" if failed else "FINISHED", tags))
        ok = all(rr.state == "done" and rr.evals_failed == 0 for rr in self.runs.values())
        ok &= self.references.finish(ray, self.tracker)
        ray.get(self.tracker.finish.remote(self.parent, "FINISHED" if ok else "FAILED"))
        return 0 if ok else 1

    def snapshot(self) -> list[dict]:
        """The live table's rows; the state by the same rule as `sweep status` (orchestrator.status)."""
        counts = {k: (rr.evals_done, rr.evals_total, rr.evals_failed) for k, rr in self.runs.items()}
        return [live_row(rr.rung, self.root, counts[k], rr.reason) for k, rr in self.runs.items()]

    def summary(self) -> dict:
        state, _ = self._observe()
        self._count_evals(state)
        rows = []
        gpu_hours = 0.0
        for rr in self.runs.values():
            st = read_json(RungPaths.for_rung(rr.rung, self.root).status) or {}
            gpu_hours += st.get("train_s", 0) * rr.rung.gpus / 3600
            rows.append(
                {
                    "rung": rr.rung.key,
                    "state": rr.state,
                    "reason": rr.reason,
                    "wait_s": st.get("wait_s"),
                    "train_s": st.get("train_s"),
                    "evals_done": rr.evals_done,
                    "evals_total": rr.evals_total,
                    "evals_failed": rr.evals_failed,
                    "failures": rr.failures,
                }
            )
        for key in policy.wanted_evals(state):
            gpu_hours += (read_json(self._record(key)) or {}).get("seconds", 0) * self.spec.evals.gpus / 3600
        rows += self.references.summary_rows()
        return {"rungs": rows, "wall_s": time.time() - self.started, "gpu_hours": gpu_hours}


def open_sweep(
    spec_path: Path, runs_dir: Path | str | None = None, only: list[str] | None = None, **kw
) -> Sweep:
    """runs_dir: --runs-dir; None for the spec's `storage:`, else runs/."""
    spec_path = Path(spec_path).resolve()  # in a Ray Job the working directory may vanish after ray.init
    spec = load_spec(spec_path)
    return Sweep(spec, spec_path, select_rungs(spec, only), runs_root(runs_dir, spec.storage), **kw)
