"""`sweep run`: the driver. One loop owns the sweep's state and, in this order:

1. resolves the spec into rungs and reads what has already run from disk;
2. connects to Ray (a local cluster, or `--address`) and checks every rung and eval
   can ever be placed, before launching anything;
3. opens the sweep's MLflow runs through one tracker actor on the driver's node;
4. trains rungs (each a Ray Train run, see orchestrator.pretrain) as resources allow;
5. whenever a rung seals a checkpoint, submits one eval task per (task, mode);
6. records every outcome on disk and in MLflow, and prints a summary.

Re-running skips finished rungs and evals, resumes partial rungs, and reuses runs.

Nothing is lost when a process dies: every metric is on disk before it is sent to MLflow,
and MLflow is reconciled against the disk (orchestrator.reconcile) when the driver starts,
when the tracker actor was restarted (Ray restarts it; the driver sees a new incarnation)
and when the driver stops. Ctrl-C and SIGTERM take the same path: cancel evals, flush the
tracker, reconcile, exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.layout import EXPORT, RungPaths, SweepPaths, read_json, read_jsonl, write_json
from contracts.names import (
    DATASET_TAG,
    FAILURE_TAG,
    GIT_TAG,
    SEARCH_TAG,
    SPEC_HASH_TAG,
    SYNTHETIC,
    eval_metric_key,
)
from contracts.spec import Data, EvalData, Readout, RungConfig, SpecError, SweepSpec, load_spec
from contracts.storage import check_reachable, is_remote, local_copy, local_file, root_of, runs_root, uri_of
from evals.run import evaluate
from orchestrator import checkpoint as ckpt
from orchestrator import references
from orchestrator.pretrain import RungOutcome, fit_rung
from orchestrator.progress import restart_line
from orchestrator.reconcile import reconcile_runs
from orchestrator.references import ReferenceEvals
from orchestrator.state import SweepLock, git_commit
from orchestrator.status import read_rung_state, restart_count
from orchestrator.tracking import Tracker, absolute_tracking_uri, rung_params, sqlite_path

EVAL_ATTEMPTS = 3  # per driver; a killed eval worker is one (Ray does not retry it behind our back)
TICK_S = 1.0
TRACKER_RESTARTS = 20


# ------------------------------------------------------------------ what to run


def select_rungs(spec: SweepSpec, only: list[str] | None) -> list[RungConfig]:
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


# ------------------------------------------------------------------ cluster checks


def _bundle(rung: RungConfig) -> dict[str, float]:
    return {"CPU": rung.cpus_per_worker, **({"GPU": 1} if rung.gpus else {})}


def _fits(nodes: list[dict], bundle: dict[str, float], count: int) -> bool:
    """Can `count` copies of `bundle` be placed on these nodes (their total resources)?"""
    placed = 0
    for res in nodes:
        placed += int(min((res.get(k, 0) // v) if v else float("inf") for k, v in bundle.items()))
    return placed >= count


def check_schedulable(spec: SweepSpec, rungs: list[RungConfig], nodes: list[dict]) -> list[str]:
    """Problems that no amount of waiting will solve, unless the cluster autoscales."""
    if spec.cluster.autoscaling:
        return []
    total = {k: sum(n.get(k, 0) for n in nodes) for k in ("CPU", "GPU")}
    have = f"the cluster has {total['CPU']:g} CPUs and {total['GPU']:g} GPUs on {len(nodes)} node(s)"
    problems = []
    for r in rungs:
        if not _fits(nodes, _bundle(r), r.workers):
            need = f"{r.workers} workers x {_bundle(r)}"
            problems.append(
                f"rung {r.name} needs {need} but {have}; "
                "lower its gpus/cpu_workers or set cluster.autoscaling: true"
            )
    ev = spec.evals
    if ev.tasks and not _fits(nodes, {"CPU": ev.cpus, **({"GPU": ev.gpus} if ev.gpus else {})}, 1):
        problems.append(
            f"an eval needs {ev.cpus} CPUs and {ev.gpus} GPUs on one node but {have}; lower evals.cpus/gpus"
        )
    return problems


def alive_node_resources() -> list[dict]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


# ------------------------------------------------------------------ eval task


def _eval_task(
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
        self.max_concurrent = max_concurrent or len(rungs)
        self.say = report
        self.lock = SweepLock(self.paths.lock)
        self.runs: dict[str, RungRun] = {}
        self.jobs: dict[tuple[str, int, str, str], EvalJob] = {}
        self.started = time.time()
        self.stop_signal: str | None = None  # "SIGTERM" when a kill, not Ctrl-C, stopped the sweep
        # Frozen backbones evaluated beside the ladder (their lines go wherever self.say does).
        self.references = ReferenceEvals(spec, self.root, lambda line: self.say(line))

    # -------------------------------------------------------- before Ray
    def preflight(self) -> None:
        references.preflight(self.spec, self.say)  # first: a missing model touches nothing
        check_reachable(self.root, write=True)
        holder = self.lock.holder()
        if holder:
            raise SpecError(
                f"sweep '{self.spec.name}' is already running (pid {holder['pid']} on {holder['host']}); "
                f"wait for it or stop it first"
            )

    def describe(self) -> list[dict]:
        """What a run would do, from disk alone (used by --dry-run and status)."""
        rows = []
        for r in self.rungs:
            paths = RungPaths.for_rung(r, self.root)
            sealed = [f.step for f in ckpt.list_steps(paths.root)]
            done_evals = sum(
                1
                for s in eval_steps(self.spec, r, sealed)
                for t in self.spec.evals.tasks
                for m in self.spec.evals.modes
                if (read_json(paths.eval_record(s, t, m)) or {}).get("state") == "done"
            )
            if ckpt.is_trained(r, self.root):
                action = "skip (trained)"
            elif sealed:
                action = f"resume from step {sealed[-1]}"
            else:
                action = "train"
            rows.append(
                {
                    "rung": r.key,
                    "action": action,
                    "steps": r.steps,
                    "checkpoints": len(sealed),
                    "evals_done": done_evals,
                }
            )
        return rows

    # -------------------------------------------------------- the run
    def run(self, address: str | None, num_cpus: int | None = None, display=None) -> int:
        import ray

        started_ray = not ray.is_initialized()
        if started_ray:
            self._init_ray(address, num_cpus)
        try:
            problems = check_schedulable(self.spec, self.rungs, alive_node_resources())
            if problems:
                raise SpecError(
                    "this sweep can never be scheduled on this cluster:\n  " + "\n  ".join(problems)
                )
            self.lock.acquire()
            previous = self._on_sigterm()
            try:
                self._open_tracking()
                self.reconcile()  # what a crash of the last driver kept from MLflow
                return self._loop(display)
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
            self.tracker = None
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
        }
        for ref in self.references.refs:  # their eval records are read as a rung's are
            if ref.key in self.references.run_ids and (keys is None or ref.key in keys):
                runs[ref.key] = (RungPaths(self.references.paths(ref).root), self.references.run_ids[ref.key])

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

    def _init_ray(self, address: str | None, num_cpus: int | None) -> None:
        import ray

        address = address or self.spec.cluster.address
        quiet = os.environ.get("SWEEP4D_WORKER_LOGS", "0") != "1"
        env = {
            "env_vars": {
                "PYTHONWARNINGS": "ignore",
                "RAY_TRAIN_V2_ENABLED": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        }
        if address:
            self.say(f"connecting to the Ray cluster at {address}")
            ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING, runtime_env=env)
        else:
            init_local_ray(num_cpus, env, log_to_driver=not quiet)
        res = ray.cluster_resources()
        self.say(
            f"Ray: {len(alive_node_resources())} node(s), "
            f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
        )

    def _open_tracking(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        spec = self.spec
        uri = absolute_tracking_uri(spec.tracking.uri)
        if (db := sqlite_path(uri)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        artifacts = uri_of(self.root / "mlartifacts")
        here = ray.get_runtime_context().get_node_id()
        # The one MLflow writer, on this node because the SQLite file is here. Ray restarts it if it
        # dies and retries the calls it had not answered (its writes are idempotent).
        actor = ray.remote(num_cpus=0, max_restarts=TRACKER_RESTARTS, max_task_retries=-1)(Tracker)
        self.tracker = actor.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
        ).remote(uri, artifacts)
        self.tracker_incarnation = ray.get(self.tracker.ping.remote())
        commit = git_commit()
        self.parent = ray.get(
            self.tracker.sweep_run.remote(
                spec.name,
                {SPEC_HASH_TAG: spec.spec_hash(), GIT_TAG: commit},
                {"spec": str(self.spec_path), "rungs": len(spec.ladder)},
            )
        )
        write_json(
            self.paths.sweep_json,
            {
                "spec": str(Path(self.spec_path).resolve()),
                "spec_hash": spec.spec_hash(),
                "tracking_uri": uri,
                "parent_run_id": self.parent,
                "started": time.time(),
                "resolved": spec.model_dump(mode="json"),
            },
        )
        spec_record = str(local_file(self.paths.sweep_json))
        ray.get(self.tracker.log_artifact.remote(self.parent, spec_record, "spec"))
        for r in self.rungs:
            tags = {SEARCH_TAG: r.search_of} if r.search_of else None
            run_id = ray.get(
                self.tracker.rung_run.remote(
                    spec.name, self.parent, r.key, r.name, r.run_name, rung_params(r), tags
                )
            )
            paths = RungPaths.for_rung(r, self.root)
            write_json(
                paths.info,
                {
                    "key": r.key,
                    "hash": r.hash,
                    "identity": r.identity(),
                    "config": r.to_dict(),
                    "git_commit": commit,
                    "mlflow_run_id": run_id,
                },
            )
            self.runs[r.key] = RungRun(r, run_id)
        if not self.train_only:
            self.references.open_runs(ray, self.tracker, self.parent, commit)

    # -------------------------------------------------------- the loop
    def _loop(self, display) -> int:
        import ray

        queue = list(self.runs.values())  # the ladder's order: `--max-concurrent 1` trains it rung by rung
        for rr in queue:
            if ckpt.is_trained(rr.rung, self.root):
                rr.state = "done"
            self._status(rr)  # pending too: a status.json left "running" by a killed driver is stale
        try:
            while True:
                self.lock.beat()
                self._watch_tracker()
                running = [rr for rr in self.runs.values() if rr.state == "running"]
                for rr in [q for q in queue if q.state == "pending"][
                    : max(0, self.max_concurrent - len(running))
                ]:
                    self._start_rung(rr)
                for rr in running:
                    self._announce_restarts(rr)
                    if not rr.thread.is_alive():
                        self._finish_rung(rr)
                if not self.train_only:
                    self._submit_evals()
                    self._collect_evals(ray)
                    self._recount()
                    self.references.submit(ray, self.tracker)
                    self.references.collect(ray, self.tracker)
                if display:
                    display(self.snapshot())
                if (
                    all(rr.state in ("done", "failed") for rr in self.runs.values())
                    and not self._pending_evals()
                ):
                    break
                time.sleep(TICK_S)
        except KeyboardInterrupt:
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
            for rr in self.runs.values():
                if rr.state == "running":
                    rr.state, rr.reason = "interrupted", f"interrupted by {by}"
                    self._status(rr)
            ray.get(self.tracker.flush.remote())
            self.reconcile()  # points a worker wrote to disk but had not sent yet
            return 143 if self.stop_signal else 130
        return self._close()

    def _start_rung(self, rr: RungRun) -> None:
        rr.state, rr.submitted = "running", time.time()
        rr.restarts_seen = restart_count(RungPaths.for_rung(rr.rung, self.root))  # earlier runs' restarts
        self._status(rr)

        def target():
            try:
                rr.outcome = fit_rung(rr.rung, self.root, self.tracker, rr.run_id)
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
    def _wanted(self, rr: RungRun) -> list[tuple[int, str, str]]:
        sealed = [f.step for f in ckpt.list_steps(RungPaths.for_rung(rr.rung, self.root).root)]
        ev = self.spec.evals
        return [(s, t, m) for s in eval_steps(self.spec, rr.rung, sealed) for t in ev.tasks for m in ev.modes]

    def _submit_evals(self) -> None:
        import ray

        ev = self.spec.evals
        # No retries inside Ray: every attempt is the driver's, so each is counted on disk.
        remote = ray.remote(_eval_task).options(num_cpus=ev.cpus, num_gpus=ev.gpus, max_retries=0)
        for rr in self.runs.values():
            for step, task, mode in self._wanted(rr):
                key = (rr.rung.key, step, task, mode)
                path = RungPaths.for_rung(rr.rung, self.root).eval_record(step, task, mode)
                rec = read_json(path) or {}
                if rec.get("state") == "done":
                    if not rec.get("logged"):  # the driver died between recording and logging
                        self._log_eval(rr, step, task, mode, rec, path)
                    continue
                if rec.get("state") == "failed" or key in self.jobs and self.jobs[key].ref is not None:
                    continue
                job = self.jobs.setdefault(key, EvalJob(rr.rung, step, task, mode))
                export = RungPaths.for_rung(rr.rung, self.root).checkpoint(step)
                on_disk = ev.data[task].model_dump() if task in ev.data else None
                job.ref = remote.remote(
                    str(export),
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

    def _recount(self) -> None:
        """Eval counts per rung, from the records on disk (the source of truth)."""
        for rr in self.runs.values():
            wanted = self._wanted(rr)
            recs = [
                read_json(RungPaths.for_rung(rr.rung, self.root).eval_record(s, t, m)) or {}
                for s, t, m in wanted
            ]
            rr.evals_total = len(wanted)
            rr.evals_done = sum(r.get("state") == "done" for r in recs)
            rr.evals_failed = sum(r.get("state") == "failed" for r in recs)

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
                if job.attempts < EVAL_ATTEMPTS:
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
            rec = {"state": "done", "attempts": job.attempts, "starts": starts, "logged": False, **result}
            write_json(path, rec)
            self._log_eval(rr, job.step, job.task, job.mode, rec, path)

    def _log_eval(self, rr: RungRun, step: int, task: str, mode: str, rec: dict, path: Path) -> None:
        """`logged` is set once the tracker confirms MLflow holds the metrics (it flushes first)."""
        import ray

        # A real dataset's metrics get their own keys, so never one series with synthetic numbers.
        dataset = rec.get("dataset", SYNTHETIC)
        metrics = {eval_metric_key(task, mode, k, dataset): v for k, v in rec["metrics"].items()}
        self.tracker.set_tags.remote(rr.run_id, {DATASET_TAG.format(task=task): dataset})
        ray.get(self.tracker.log_metrics_now.remote(rr.run_id, metrics, step))
        write_json(path, {**rec, "logged": True})

    def _pending_evals(self) -> bool:
        if self.train_only:
            return False
        if any(job.ref is not None for job in self.jobs.values()) or self.references.pending():
            return True
        # A checkpoint sealed after the last submit pass still needs its evals.
        for rr in self.runs.values():
            for s, t, m in self._wanted(rr):
                if (read_json(RungPaths.for_rung(rr.rung, self.root).eval_record(s, t, m)) or {}).get(
                    "state"
                ) not in ("done", "failed"):
                    return True
        return False

    # -------------------------------------------------------- the end
    def _close(self) -> int:
        import ray

        self.reconcile()  # points written to disk by workers that exited before sending them
        for rr in self.runs.values():
            failed = rr.state == "failed"
            tags = {FAILURE_TAG: rr.reason} if failed else {}
            ray.get(self.tracker.finish.remote(rr.run_id, "FAILED" if failed else "FINISHED", tags))
        ok = all(rr.state == "done" and rr.evals_failed == 0 for rr in self.runs.values())
        if not self.train_only and self.references.refs:
            ok &= self.references.finish(ray, self.tracker)
        ray.get(self.tracker.finish.remote(self.parent, "FINISHED" if ok else "FAILED"))
        return 0 if ok else 1

    def snapshot(self) -> list[dict]:
        """The live table's rows; the state by the same rule as `sweep status` (orchestrator.status)."""
        rows = []
        for rr in self.runs.values():
            paths = RungPaths.for_rung(rr.rung, self.root)
            prog = read_json(paths.progress) or {}
            step = prog.get("step", 0)
            rate = prog.get("clips_per_s")
            state = read_rung_state(rr.rung, self.root, driver_alive=True)  # this process is the driver
            eta = (rr.rung.steps - step) * rr.rung.batch_size / rate if rate and state == "running" else None
            rows.append(
                {
                    "rung": rr.rung.key,
                    "state": state,
                    "step": step,
                    "total": rr.rung.steps,
                    "loss": prog.get("loss"),
                    "clips_per_s": rate,
                    "eta_s": eta,
                    "evals_done": rr.evals_done,
                    "evals_total": rr.evals_total,
                    "evals_failed": rr.evals_failed,
                    "restarts": restart_count(paths),
                    "reason": rr.reason,
                }
            )
        return rows

    def summary(self) -> dict:
        if not self.train_only:
            self._recount()
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
        for rr in self.runs.values():
            for s, t, m in self._wanted(rr):
                rec = read_json(RungPaths.for_rung(rr.rung, self.root).eval_record(s, t, m)) or {}
                gpu_hours += rec.get("seconds", 0) * self.spec.evals.gpus / 3600
        if not self.train_only:
            rows += self.references.summary_rows()
        return {"rungs": rows, "wall_s": time.time() - self.started, "gpu_hours": gpu_hours}


def open_sweep(
    spec_path: Path, runs_dir: Path | str | None = None, only: list[str] | None = None, **kw
) -> Sweep:
    """runs_dir: --runs-dir; None for the spec's `storage:`, else runs/."""
    spec = load_spec(spec_path)
    return Sweep(spec, spec_path, select_rungs(spec, only), runs_root(runs_dir, spec.storage), **kw)
