"""The driver's own state on disk: one driver per sweep (`SweepLock`), and the git commit a
run was made from. Where every record lives, and how it is written: contracts.layout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from contracts.layout import read_json, write_json

HEARTBEAT_STALE_S = 30.0


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


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
