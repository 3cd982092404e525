"""Reference models in `sweep run`: weights preflight, MLflow runs, eval jobs (the driver's side).

A reference (contracts.references) is evaluated like a rung's final checkpoint (the same tasks,
readout settings, seeds, clips and bootstrap; evals.reference) but never trained: one eval job per
(reference, task), frozen mode only. Its records live in `references/<name>-<hash6>/evals/step_00000000/`
(contracts.layout.ReferencePaths), the same records a rung's evals write, so a rerun skips what is
done, `sweep status` counts them and the reconciler (orchestrator.reconcile) repairs MLflow from them.
Its MLflow run is a child of the sweep's parent run, tagged sweep4d.role=reference; its metrics are
logged at step 0 and the backbone's params (parameter count, layer, input shape) when its first eval
returns them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from contracts.layout import ReferencePaths, RungPaths, read_json, write_json
from contracts.names import REFERENCE_ROLE, REFERENCE_TAG, ROLE_TAG
from contracts.references import ReferenceConfig
from contracts.spec import Data, EvalData, Readout, SweepSpec
from orchestrator.policy import REFERENCE, EvalKey, retry_eval
from orchestrator.sweep_tracking import log_eval

REFERENCE_STEP = 0  # the step a reference's evals are recorded and logged at: it has no training


def preflight(spec: SweepSpec, say: Callable[[str], None] = print) -> None:
    """Every reference's weights at hand (or fetched now, once) and its code trusted only if its entry
    says so; BackboneError (one line, exit 2) before anything starts."""
    from models.backbones import ensure_weights

    for ref in spec.reference_configs():
        ensure_weights(ref, say)


def reference_tasks(spec: SweepSpec) -> list[tuple[str, str]]:
    """The (task, mode) evals every reference gets: the sweep's tasks, frozen (a reference is never
    trained, so a finetune mode is a rung's only)."""
    return [(t, "frozen") for t in spec.evals.tasks if "frozen" in spec.evals.modes]


def reference_eval_task(
    ref: dict, task: str, mode: str, readout: dict, data: dict, threads: int, dataset
) -> dict:
    """Runs as a Ray task: one reference on one task; on a GPU in bf16 under no_grad."""
    import ray
    import torch

    from evals.reference import evaluate_reference

    torch.set_num_threads(max(1, threads))
    t0 = time.time()
    info: dict = {}
    metrics = evaluate_reference(
        ReferenceConfig.from_dict(ref),
        task,
        mode,
        Readout(**readout),
        Data(**data),
        device="cuda" if torch.cuda.is_available() else "cpu",
        datasets={task: EvalData(**dataset)} if dataset else {},
        info=info,
    )
    return {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "seconds": time.time() - t0,
        "node_id": ray.get_runtime_context().get_node_id(),
        **info,
    }


def reference_params(ref: ReferenceConfig, described: dict | None = None) -> dict:
    """The run's params: source and id at once, the backbone's own when its first eval reports them."""
    return {"source": ref.source, "id": ref.model_id, "reference": ref.name} | (described or {})


@dataclass
class Job:
    ref: ReferenceConfig
    task: str
    mode: str
    attempts: int = 0
    handle: object = None
    started: float = 0.0


class ReferenceEvals:
    """The driver's side of reference eval jobs (EvalKey kind "reference", which orchestrator.policy
    decides like every eval): their MLflow runs, records, submission, collection and logging."""

    def __init__(self, spec: SweepSpec, root, say: Callable[[str], None] = print, train_only: bool = False):
        self.spec, self.root, self.say = spec, root, say
        self.refs = {} if train_only else {ref.key: ref for ref in spec.reference_configs()}
        self.jobs: dict[EvalKey, Job] = {}
        self.run_ids: dict[str, str] = {}

    def record(self, key: EvalKey):
        return ReferencePaths.for_reference(self.refs[key.owner], self.root).eval_record(key.task, key.mode)

    @property
    def keys(self) -> list[str]:
        return list(self.refs)

    def open_runs(self, tracker, parent: str) -> None:
        import ray

        for ref in self.refs.values():
            tags = {ROLE_TAG: REFERENCE_ROLE, REFERENCE_TAG: ref.key}
            params = reference_params(ref)
            run_id = ray.get(
                tracker.rung_run.remote(ref.sweep, parent, ref.key, ref.name, ref.name, params, tags)
            )
            info = {"key": ref.key, "hash": ref.hash, "identity": ref.identity(), "reference": ref.to_dict()}
            write_json(ReferencePaths.for_reference(ref, self.root).info, info | {"mlflow_run_id": run_id})
            self.run_ids[ref.key] = run_id

    def runs_to_reconcile(self, keys: list[str] | None) -> dict:
        """key -> (its directory read as a rung's, MLflow run id): its eval records are a rung's."""
        return {
            k: (RungPaths(ReferencePaths.for_reference(self.refs[k], self.root).root), run_id)
            for k, run_id in self.run_ids.items()
            if keys is None or k in keys
        }

    def all_keys(self) -> list[EvalKey]:
        tasks = reference_tasks(self.spec)
        return [EvalKey(k, REFERENCE_STEP, t, m, REFERENCE) for k in self.refs for t, m in tasks]

    def in_flight(self) -> set[EvalKey]:
        return {k for k, job in self.jobs.items() if job.handle is not None}

    def tick(self, ray, tracker, keys: list[EvalKey]) -> list[EvalKey]:
        """Each driver tick: record the reference jobs that finished, submit the reference evals among
        `keys` (the policy's decision), and hand back the others (a rung's)."""
        self.collect(ray, tracker)
        self.submit(ray, [k for k in keys if k.kind == REFERENCE])
        return [k for k in keys if k.kind != REFERENCE]

    def submit(self, ray, keys: list[EvalKey]) -> None:
        if not keys:
            return
        ev = self.spec.evals
        remote = ray.remote(reference_eval_task).options(num_cpus=ev.cpus, num_gpus=ev.gpus, max_retries=0)
        for key in keys:
            path, ref = self.record(key), self.refs[key.owner]
            rec = read_json(path) or {}
            job = self.jobs.setdefault(key, Job(ref, key.task, key.mode))
            on_disk = ev.data[key.task].model_dump() if key.task in ev.data else None
            readout = ev.readout_for(key.task).model_dump()
            job.handle = remote.remote(
                ref.to_dict(), key.task, key.mode, readout, self.spec.data.model_dump(), ev.cpus, on_disk
            )
            job.attempts, job.started = job.attempts + 1, time.time()
            starts = rec.get("starts", 0) + 1
            write_json(
                path, {"state": "running", "attempts": job.attempts, "starts": starts, "started": job.started}
            )

    def collect(self, ray, tracker) -> None:
        """Record and log the jobs that finished, and log the done records MLflow may lack."""
        for key in self.all_keys():
            rec = read_json(self.record(key)) or {}
            idle = key not in self.jobs or self.jobs[key].handle is None
            if rec.get("state") == "done" and not rec.get("logged") and idle:
                self.log(ray, tracker, key, rec)  # the driver died between recording and logging
        live = {job.handle: (key, job) for key, job in self.jobs.items() if job.handle is not None}
        if not live:
            return
        ready, _ = ray.wait(list(live), num_returns=len(live), timeout=0)
        for handle in ready:
            key, job = live[handle]
            job.handle = None
            path = self.record(key)
            starts = (read_json(path) or {}).get("starts", job.attempts)
            try:
                result = ray.get(handle)
            except Exception as e:
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                state = "retry" if retry_eval(job.attempts) else "failed"
                self.say(f"[{key.owner}] reference eval {key.task}/{key.mode} {state.upper()}: {reason}")
                write_json(
                    path, {"state": state, "attempts": job.attempts, "starts": starts, "reason": reason}
                )
                continue
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
            self.say(f"[{key.owner}] reference eval {key.task}/{key.mode} done in {rec['seconds']:.0f}s")
            self.log(ray, tracker, key, rec)

    def log(self, ray, tracker, key: EvalKey, rec: dict) -> None:
        """Its metrics at step 0 and, from the first that has them, the backbone's params."""
        run_id, ref = self.run_ids[key.owner], self.refs[key.owner]
        if rec.get("reference"):  # the same values from every task: logging them again is a no-op
            tracker.log_params.remote(run_id, reference_params(ref, rec["reference"]))
        log_eval(tracker, run_id, REFERENCE_STEP, key.task, key.mode, rec, self.record(key))

    def interrupt(self, ray) -> None:
        for key, job in self.jobs.items():
            if job.handle is not None:
                ray.cancel(job.handle, force=True)
                write_json(self.record(key), {**(read_json(self.record(key)) or {}), "state": "interrupted"})

    def drop_handles(self) -> None:
        """Before Ray shuts down: object refs freed after it make Ray's core worker exit the process."""
        for job in self.jobs.values():
            job.handle = None

    def summary_rows(self) -> list[dict]:
        """The end-of-run table's rows (the keys a rung's row has)."""
        return [
            {"rung": r["rung"], "state": r["state"], "reason": None, "wait_s": None, "train_s": None}
            | {k: r[k] for k in ("evals_done", "evals_total", "failures")}
            | {"evals_failed": len(r["failures"])}
            for r in (reference_rows(self.spec, self.root) if self.refs else [])
        ]

    def finish(self, ray, tracker) -> bool:
        """Close every reference run; True when all their evals are done."""
        ok = True
        for row in reference_rows(self.spec, self.root) if self.refs else []:
            ok &= row["state"] == "done"
            status = "FINISHED" if row["state"] == "done" else "FAILED"
            ray.get(tracker.finish.remote(self.run_ids[row["rung"]], status))
        return ok


def reference_rows(spec: SweepSpec, root) -> list[dict]:
    """`sweep status`'s rows for the references, from disk alone: name, state, evals done/total."""
    rows = []
    for ref in spec.reference_configs():
        paths = ReferencePaths.for_reference(ref, root)
        recs = [read_json(paths.eval_record(t, m)) or {} for t, m in reference_tasks(spec)]
        states = [r.get("state") for r in recs]
        failures = [r.get("reason", "") for r in recs if r.get("state") == "failed"]
        if states and all(s == "done" for s in states):
            state = "done"
        elif failures and all(s in ("done", "failed") for s in states):
            state = "failed"
        elif any(s in ("running", "retry") for s in states):
            state = "running"
        else:
            state = "pending"
        described = next((r["reference"] for r in recs if r.get("reference")), {})
        rows.append(
            {
                "kind": "reference",
                "rung": ref.key,
                "source": ref.source,
                "id": ref.model_id,
                "state": state,
                "num_params": described.get("num_params"),
                "step": 0,  # the columns a rung's row has: a reference has no training
                "total": 0,
                "last_checkpoint": None,
                "evals_done": states.count("done"),
                "evals_total": len(recs),
                "restarts": 0,
                "failures": failures,
                "eta_s": None,
            }
        )
    return rows
