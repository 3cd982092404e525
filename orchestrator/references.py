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

from contracts.layout import ReferencePaths, read_json, write_json
from contracts.names import DATASET_TAG, REFERENCE_ROLE, REFERENCE_TAG, ROLE_TAG, SYNTHETIC, eval_metric_key
from contracts.references import ReferenceConfig
from contracts.spec import Data, EvalData, Readout, SweepSpec

REFERENCE_STEP = 0  # the step a reference's evals are recorded and logged at: it has no training
ATTEMPTS = 3  # per driver, as a rung's evals


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


class ReferenceEvals:
    """The driver's reference eval jobs: open their runs, submit, collect, record, log."""

    def __init__(self, spec: SweepSpec, root, say: Callable[[str], None] = print):
        self.spec, self.root, self.say = spec, root, say
        self.refs = spec.reference_configs()
        self.jobs: dict[tuple[str, str, str], Job] = {}
        self.run_ids: dict[str, str] = {}
        self.failed: list[str] = []

    def paths(self, ref: ReferenceConfig) -> ReferencePaths:
        return ReferencePaths.for_reference(ref, self.root)

    def record_path(self, ref: ReferenceConfig, task: str, mode: str):
        return self.paths(ref).eval_record(task, mode)

    def open_runs(self, ray, tracker, parent: str, commit: str) -> None:
        for ref in self.refs:
            tags = {ROLE_TAG: REFERENCE_ROLE, REFERENCE_TAG: ref.key}
            run_id = ray.get(
                tracker.rung_run.remote(
                    self.spec.name, parent, ref.key, ref.name, ref.name, reference_params(ref), tags
                )
            )
            write_json(
                self.paths(ref).info,
                {
                    "key": ref.key,
                    "hash": ref.hash,
                    "identity": ref.identity(),
                    "reference": ref.to_dict(),
                    "git_commit": commit,
                    "mlflow_run_id": run_id,
                },
            )
            self.run_ids[ref.key] = run_id

    def submit(self, ray, tracker) -> None:
        ev = self.spec.evals
        remote = ray.remote(reference_eval_task).options(num_cpus=ev.cpus, num_gpus=ev.gpus, max_retries=0)
        for ref in self.refs:
            for task, mode in reference_tasks(self.spec):
                key = (ref.key, task, mode)
                path = self.record_path(ref, task, mode)
                rec = read_json(path) or {}
                if rec.get("state") == "done":
                    if not rec.get("logged"):  # the driver died between recording and logging
                        self.log(ray, tracker, ref, task, mode, rec)
                    continue
                job = self.jobs.setdefault(key, Job(ref, task, mode))
                if rec.get("state") == "failed" or job.handle is not None:
                    continue
                on_disk = ev.data[task].model_dump() if task in ev.data else None
                job.handle = remote.remote(
                    ref.to_dict(),
                    task,
                    mode,
                    ev.readout_for(task).model_dump(),
                    self.spec.data.model_dump(),
                    ev.cpus,
                    on_disk,
                )
                job.attempts += 1
                starts = rec.get("starts", 0) + 1
                write_json(
                    path,
                    {"state": "running", "attempts": job.attempts, "starts": starts, "started": time.time()},
                )

    def collect(self, ray, tracker) -> None:
        live = {job.handle: job for job in self.jobs.values() if job.handle is not None}
        if not live:
            return
        ready, _ = ray.wait(list(live), num_returns=len(live), timeout=0)
        for handle in ready:
            job = live[handle]
            job.handle = None
            path = self.record_path(job.ref, job.task, job.mode)
            starts = (read_json(path) or {}).get("starts", job.attempts)
            try:
                result = ray.get(handle)
            except Exception as e:
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                state = "retry" if job.attempts < ATTEMPTS else "failed"
                self.say(f"[{job.ref.key}] reference eval {job.task}/{job.mode} {state.upper()}: {reason}")
                write_json(
                    path, {"state": state, "attempts": job.attempts, "starts": starts, "reason": reason}
                )
                if state == "failed":
                    self.failed.append(f"{job.ref.key} {job.task}/{job.mode}: {reason}")
                continue
            rec = {"state": "done", "attempts": job.attempts, "starts": starts, "logged": False, **result}
            write_json(path, rec)
            self.say(f"[{job.ref.key}] reference eval {job.task}/{job.mode} done in {rec['seconds']:.0f}s")
            self.log(ray, tracker, job.ref, job.task, job.mode, rec)

    def log(self, ray, tracker, ref: ReferenceConfig, task: str, mode: str, rec: dict) -> None:
        """`logged` is set once the tracker confirms MLflow holds the metrics (it flushes first)."""
        run_id = self.run_ids[ref.key]
        dataset = rec.get("dataset", SYNTHETIC)
        metrics = {eval_metric_key(task, mode, k, dataset): v for k, v in rec["metrics"].items()}
        tracker.set_tags.remote(run_id, {DATASET_TAG.format(task=task): dataset})
        if rec.get("reference"):  # the same values from every task: logging them again is a no-op
            tracker.log_params.remote(run_id, reference_params(ref, rec["reference"]))
        ray.get(tracker.log_metrics_now.remote(run_id, metrics, REFERENCE_STEP))
        write_json(self.record_path(ref, task, mode), {**rec, "logged": True})

    def pending(self) -> bool:
        if any(job.handle is not None for job in self.jobs.values()):
            return True
        return any(
            (read_json(self.record_path(ref, t, m)) or {}).get("state") not in ("done", "failed")
            for ref in self.refs
            for t, m in reference_tasks(self.spec)
        )

    def interrupt(self, ray) -> None:
        for job in self.jobs.values():
            if job.handle is not None:
                ray.cancel(job.handle, force=True)
                path = self.record_path(job.ref, job.task, job.mode)
                write_json(path, {**(read_json(path) or {}), "state": "interrupted"})

    def drop_handles(self) -> None:
        """Before Ray shuts down: object refs freed after it make Ray's core worker exit the process."""
        for job in self.jobs.values():
            job.handle = None

    def summary_rows(self) -> list[dict]:
        """The end-of-run table's rows (the keys a rung's row has)."""
        return [
            {
                "rung": r["rung"],
                "state": r["state"],
                "reason": None,
                "wait_s": None,
                "train_s": None,
                "evals_done": r["evals_done"],
                "evals_total": r["evals_total"],
                "evals_failed": len(r["failures"]),
                "failures": r["failures"],
            }
            for r in reference_rows(self.spec, self.root)
        ]

    def finish(self, ray, tracker) -> bool:
        """Close every reference run; True when all their evals are done."""
        ok = True
        for ref in self.refs:
            recs = [read_json(self.record_path(ref, t, m)) or {} for t, m in reference_tasks(self.spec)]
            done = all(r.get("state") == "done" for r in recs)
            ok &= done
            ray.get(tracker.finish.remote(self.run_ids[ref.key], "FINISHED" if done else "FAILED"))
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
