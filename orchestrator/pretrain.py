"""Pretraining one rung, the driver side: DeepSpeed ZeRO-3 inside a Ray Train TorchTrainer.

Ray Train's experiment directory *is* the rung's run directory
(`storage_path=runs/<sweep>`, `name=<rung>-<hash6>`): checkpoints are sealed there
by rank 0 and registered with Ray without a copy (NO_UPLOAD). A worker failure is
restarted by Ray Train's FailureConfig from `ray.train.get_checkpoint()`; starting
the rung again later resumes the same way. On a store (`storage: s3://…`) the
storage_path is the store URI, and a restarted worker group resumes from the newest
checkpoint whose manifest the store holds. What each worker runs: orchestrator.training.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from contracts.layout import RAY_SNAPSHOT, RungPaths, read_json
from contracts.spec import RungConfig
from contracts.storage import is_remote
from orchestrator.training.loop import train_loop


@dataclass
class RungOutcome:
    key: str
    ok: bool
    step: int
    reason: str | None = None


def reconcile_ray_snapshot(paths: RungPaths) -> str | None:
    """Ray Train refuses to start when its snapshot names a checkpoint that is gone (deleted,
    or lost with a disk). Our manifests are the record that matters: set the snapshot
    aside and let the worker resume from the newest valid checkpoint on disk."""
    path = paths.ray_snapshot
    try:
        snap = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        snap = {"checkpoint_results": [{"checkpoint_dir_name": "(unreadable snapshot)"}]}
    missing = [
        c["checkpoint_dir_name"]
        for c in snap.get("checkpoint_results", [])
        if not (paths.root / c["checkpoint_dir_name"]).is_dir()
    ]
    if not missing:
        return None
    path.rename(path.with_name(f"{RAY_SNAPSHOT}.stale-{int(time.time())}"))
    return (
        f"Ray's run snapshot names missing checkpoints ({', '.join(missing)}); "
        "resuming from the run directory instead"
    )


def import_deepspeed_without_mlflow() -> None:
    """Import DeepSpeed with its optional MLflow import refused. DeepSpeed's autotuner imports mlflow
    only to log autotuning trials, which sweep4d never runs, and that import (pandas, fastapi, ...)
    was about half of `import deepspeed` in every fresh worker (docs/performance.md). Afterwards
    mlflow imports normally again; a process that already holds it is left alone."""
    if "mlflow" in sys.modules:
        return
    sys.modules["mlflow"] = None  # `import mlflow` raises ImportError, which DeepSpeed catches
    try:
        import deepspeed  # noqa: F401
    finally:
        del sys.modules["mlflow"]


def worker_main(config: dict) -> None:
    """What each Ray Train worker runs: the training loop (orchestrator.training.loop), after a
    quicker `import deepspeed`."""
    import_deepspeed_without_mlflow()
    train_loop(config)


def fit_rung(
    rung: RungConfig, runs_root: Path, tracker=None, run_id: str | None = None, stop=None
) -> RungOutcome:
    """Train (or resume) one rung to completion with Ray Train, or until `stop` (a StopFlag actor,
    orchestrator.training.stop) is set. Ray must be initialised."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # How often Ray Train's controller polls its workers (default 2 s): it notices a finished or
    # failed worker group that much later; 0.5 s took 4 s off the end of every fit (5.0 -> 1.0 s).
    # Read from the driver's environment and passed on by Ray Train; a value set by the user wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    paths = RungPaths.for_rung(rung, runs_root)
    run_dir = paths.root
    if not is_remote(run_dir):
        run_dir = run_dir.resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
    paths.failure.unlink(missing_ok=True)
    warning = reconcile_ray_snapshot(paths)
    if warning:
        print(f"WARNING [{rung.key}] {warning}", flush=True)
    gpu = rung.gpus > 0
    trainer = TorchTrainer(
        worker_main,
        train_loop_config={
            "rung": rung.to_dict(),
            "run_dir": str(run_dir),
            "tracker": tracker,
            "run_id": run_id,
            # One id per fit: a worker group that finds it in resume.json is a restart within this fit.
            "launch": uuid.uuid4().hex,
            "max_failures": rung.max_failures,
            "stop": stop,
        },
        scaling_config=ScalingConfig(
            num_workers=rung.workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": rung.cpus_per_worker, **({"GPU": 1} if gpu else {})},
        ),
        run_config=RunConfig(
            name=rung.key,
            storage_path=str(run_dir.parent),  # a directory, or the store's URI
            failure_config=FailureConfig(max_failures=rung.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray Train gave up after max_failures
        cause = getattr(e, "__cause__", None) or e
        reason = f"training failed: {type(cause).__name__}: {cause}"
        return RungOutcome(rung.key, False, _last_step(paths), reason)
    del result  # outcomes are read from the run dir, where rank 0 records a divergence
    failure = (read_json(paths.failure) or {}).get("reason")
    if failure:
        return RungOutcome(rung.key, False, _last_step(paths), failure)
    step = _last_step(paths)
    if stop is not None and step < rung.steps:  # left its loop because `stop` was set
        return RungOutcome(rung.key, False, step, f"stopped at step {step}")
    return RungOutcome(rung.key, True, step)


def _last_step(paths: RungPaths) -> int:
    return (read_json(paths.progress) or {}).get("step", 0)
