"""Every path a sweep writes, derived from the spec alone (Marin's executor style), so that
"what has run" is visible on disk and any process (driver, Ray worker, `sweep status`,
`sweep report`) finds the same files.

    runs/<sweep>/
        sweep.json                         spec path, spec hash, tracking URI, parent MLflow run, last start
                                           (`started`: MLflow runs open; `driver_started`: the driver began)
        .lock                              the live driver's pid, host and heartbeat
        report/                            `sweep report`'s output (report.html, fits.json, figures)
        <rung>-<hash6>/                    one rung: its identity hash names it (contracts.spec)
            info.json                      resolved config, identity, git commit, MLflow run id (driver)
            status.json                    pending | running | done | failed | interrupted, reason, times
                                           (driver)
            progress.json                  step, total, loss, clips/s, time (rank 0, every step)
            metrics.jsonl                  one line per optimiser step, once even after a resume (rank 0),
                                           written before the step is sent to MLflow: the record MLflow
                                           is reconciled against (orchestrator.reconcile); a checkpoint's
                                           step also holds val/loss, the held-out loss
            system.jsonl                   one line per system-metrics sample (CPU, memory, GPU memory)
                                           with the step it was taken at, before MLflow (rank 0)
            resume.json                    where the latest worker group started: step, warnings, the fit's
                                           launch id, attempt (rank 0)
            restarts.jsonl                 one line per worker-group restart after a failure: attempt,
                                           max_failures, died_at_step, resumed_from, time (rank 0)
            failure.json                   why training stopped for good (a diverged loss), if it did (rank 0)
            workers/rank<N>.json           who ran where: pid, node, ZeRO partition size, start step
                                           (each rank)
            checkpoints/step_<8 digits>/   a sealed checkpoint (orchestrator.checkpoint):
                deepspeed/                 the engine's ZeRO shards, one set per rank
                export/encoder.safetensors the consolidated fp32 encoder that evals read (models.export)
                export/rung.json           the rung's resolved config
                export/probe.safetensors   final checkpoint only: the engine's features of one fixed clip
                manifest.json              written last: every file with its size and sha256, world_size, and
                                           val_loss (the held-out loss at this step; synthetic data only)
                parts/rank<N>.json         on a store: the files rank N uploaded, with sizes and sha256
            checkpoints/.staging-step_<8 digits>/   a checkpoint being written; never read
            checkpoint_manager_snapshot.json        Ray Train's own record of registered checkpoints
            evals/step_<8 digits>/<task>-<mode>.json   one record per eval: state (running | retry |
                                           interrupted | done | failed), attempts (this driver's tries),
                                           starts (every start, across drivers), metrics, seconds
                                           (the task's run time), started / ended (epoch seconds: the
                                           driver submitted it / saw it finish; read by `sweep simulate
                                           --calibrate`), logged (the tracker confirmed MLflow holds
                                           the metrics)
    runs/mlflow.db, runs/mlartifacts/      the default MLflow store (spec `tracking.uri`)

The runs root is `runs/` or the spec's `storage:` URI (contracts.storage): on a store the same tree
lives under `s3://bucket/prefix/`, with two differences. A checkpoint is written in place, no
staging dir: each rank uploads its own files and a list of them (`parts/rank<N>.json`), and rank 0
writes manifest.json last, so a checkpoint without one is not a checkpoint; and the MLflow tracking
DB stays local (artifacts go to `<storage>/mlartifacts/`).

Every JSON record is written atomically (`write_json`: temp file + rename on disk, one PUT on a
store), so a killed process leaves either the old record or the new one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from contracts.storage import is_remote, retrying, root_of, where

# Inside a checkpoint dir.
DS_TAG = "deepspeed"  # the tag engine.save_checkpoint writes under
EXPORT = "export"
WEIGHTS = "encoder.safetensors"
CONFIG = "rung.json"
PROBE = "probe.safetensors"
MANIFEST = "manifest.json"
PARTS = "parts"  # on a store: parts/rank<N>.json, what each rank uploaded
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(name: str) -> int:
    """Inverse of step_name (also accepts '.staging-step_…')."""
    return int(name.rsplit("_", 1)[1])


@dataclass(frozen=True)
class RungPaths:
    root: Path  # runs/<sweep>/<rung>-<hash6>

    @classmethod
    def of(cls, runs_root: Path, sweep: str, key: str) -> RungPaths:
        return cls(root_of(runs_root) / sweep / key)

    @classmethod
    def for_rung(cls, rung, runs_root: Path) -> RungPaths:
        """A resolved rung's (contracts.spec.RungConfig) directory under runs_root."""
        return cls.of(runs_root, rung.sweep, rung.key)

    @property
    def key(self) -> str:
        return self.root.name

    info = property(lambda self: self.root / "info.json")
    status = property(lambda self: self.root / "status.json")
    progress = property(lambda self: self.root / "progress.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    system = property(lambda self: self.root / "system.jsonl")
    resume = property(lambda self: self.root / "resume.json")
    restarts = property(lambda self: self.root / "restarts.jsonl")
    failure = property(lambda self: self.root / "failure.json")
    workers = property(lambda self: self.root / "workers")
    checkpoints = property(lambda self: self.root / "checkpoints")
    evals = property(lambda self: self.root / "evals")
    ray_snapshot = property(lambda self: self.root / RAY_SNAPSHOT)

    def worker(self, rank: int) -> Path:
        return self.workers / f"rank{rank}.json"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    def staging(self, step: int) -> Path:
        return self.checkpoints / f".staging-{step_name(step)}"

    def export(self, step: int) -> Path:
        return self.checkpoint(step) / EXPORT

    def eval_record(self, step: int, task: str, mode: str) -> Path:
        return self.evals / step_name(step) / f"{task}-{mode}.json"


@dataclass(frozen=True)
class SweepPaths:
    root: Path  # runs/<sweep>

    @classmethod
    def of(cls, runs_root: Path, sweep: str) -> SweepPaths:
        return cls(root_of(runs_root) / sweep)

    sweep_json = property(lambda self: self.root / "sweep.json")
    lock = property(lambda self: self.root / ".lock")
    report = property(lambda self: self.root / "report")

    def rung(self, key: str) -> RungPaths:
        return RungPaths(self.root / key)


def most_recent_sweep(runs_root: Path) -> Path | None:
    """The sweep dir whose sweep.json was written last (what `sweep report` uses with no spec)."""
    found = list(root_of(runs_root).glob("*/sweep.json"))
    return max(found, key=lambda p: p.stat().st_mtime).parent if found else None


# ------------------------------------------------------------------ records


def write_text(path: Path, text: str) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one. On a store one PUT
    is already atomic; on disk, a temp file renamed into place."""
    if is_remote(path):
        retrying(f"write of {where(path)}", lambda: path.write_text(text))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_text(path: Path) -> str:
    """A record's text. On a store: one GET of the whole object (a file handle's HEAD-then-ranged-GET
    fails with FileExpired when a writer replaces the record in between, as rank 0 does with
    progress.json every step), retried when it fails for any reason but a missing key."""
    path = root_of(path)
    if is_remote(path):
        return retrying(f"read of {where(path)}", lambda: path.fs.cat_file(path.path).decode())
    return path.read_text()


def json_text(obj: dict) -> str:
    """How every JSON record is written."""
    return json.dumps(obj, indent=1, sort_keys=True, default=str)


def write_json(path: Path, obj: dict) -> None:
    write_text(path, json_text(obj))


def read_json(path: Path) -> dict | None:
    """The record, or None when absent or unreadable (a torn write is treated as absent)."""
    try:
        return json.loads(read_text(path))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """The lines of a JSON-lines record; a torn last line (a killed writer) is dropped."""
    try:
        lines = read_text(path).splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
