"""What has run, visible on disk (Marin's executor style). Every path derives from the spec:

    runs/<sweep>/sweep.json                          spec path, spec hash, tracking URI, last start
    runs/<sweep>/.lock                               the live driver's pid and heartbeat
    runs/<sweep>/<rung>-<hash6>/info.json            resolved config, identity, git commit, MLflow run id
    runs/<sweep>/<rung>-<hash6>/status.json          pending | running | done | failed (+ reason, times)
    runs/<sweep>/<rung>-<hash6>/progress.json        step, total, loss, clips/s (written by rank 0)
    runs/<sweep>/<rung>-<hash6>/checkpoints/step_*/  sealed checkpoints (orchestrator.checkpoint)
    runs/<sweep>/<rung>-<hash6>/evals/step_*/<task>-<mode>.json   one record per eval

All records are written atomically (temp file + rename), so a killed driver leaves
either the old record or the new one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

HEARTBEAT_STALE_S = 30.0


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The record, or None when absent or unreadable (a torn write is treated as absent)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def sweep_dir(runs_root: Path, sweep: str) -> Path:
    return runs_root / sweep


def eval_record(run_dir: Path, step: int, task: str, mode: str) -> Path:
    return run_dir / "evals" / f"step_{step:08d}" / f"{task}-{mode}.json"


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def most_recent_sweep(runs_root: Path) -> Path | None:
    """The sweep dir whose sweep.json was written last (what `sweep report` uses with no spec)."""
    found = [p for p in runs_root.glob("*/sweep.json")]
    return max(found, key=lambda p: p.stat().st_mtime).parent if found else None


class SweepLock:
    """One driver per sweep. A lock whose pid is gone or whose heartbeat is stale is taken over."""

    def __init__(self, path: Path):
        self.path = path

    def holder(self) -> dict | None:
        rec = read_json(self.path)
        if not rec:
            return None
        same_host = rec.get("host") == socket.gethostname()
        alive = _pid_alive(rec.get("pid", -1)) if same_host else True
        fresh = time.time() - rec.get("heartbeat", 0) < HEARTBEAT_STALE_S
        return rec if alive and fresh and rec.get("pid") != os.getpid() else None

    def acquire(self) -> None:
        self.beat()

    def beat(self) -> None:
        write_json(self.path, {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time()})

    def release(self) -> None:
        rec = read_json(self.path)
        if rec and rec.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
