"""A byte-bounded LRU of numpy arrays, spilling to .npy files when memory runs out.

Evals keep two things here: the stacked clips of each eval split (shared by every
checkpoint and task) and the frozen features of each (checkpoint, split), which are
computed once and reused across readout epochs and tasks in the same process.
Entries evicted from memory are written to `spill_dir` as plain .npy files (never
pickles) and read back memory-mapped; an entry larger than the whole memory budget
goes straight to disk. The spill dir is a per-process temp dir, removed at exit.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

Entry = dict[str, np.ndarray]


def nbytes(entry: Entry) -> int:
    return sum(a.nbytes for a in entry.values())


class ArrayCache:
    def __init__(self, max_bytes: int = 1 << 30, spill_dir: str | Path | None = None):
        self.max_bytes = max_bytes
        self._spill_dir = Path(spill_dir) if spill_dir else None
        self.memory: OrderedDict[str, Entry] = OrderedDict()  # most recently used last
        self.spilled: dict[str, Path] = {}
        self.hits = self.misses = 0

    @property
    def bytes(self) -> int:
        return sum(nbytes(e) for e in self.memory.values())

    @property
    def spill_dir(self) -> Path:
        if self._spill_dir is None:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="sweep4d-eval-cache-"))
            atexit.register(shutil.rmtree, self._spill_dir, ignore_errors=True)
        return self._spill_dir

    def get(self, key: str, compute: Callable[[], Entry]) -> Entry:
        """The entry for `key`, computing it with `compute()` on a miss."""
        if key in self.memory:
            self.hits += 1
            self.memory.move_to_end(key)
            return self.memory[key]
        if key in self.spilled:
            self.hits += 1
            d = self.spilled[key]
            return {f.stem: np.load(f, mmap_mode="r") for f in sorted(d.glob("*.npy"))}
        self.misses += 1
        entry = compute()
        if nbytes(entry) > self.max_bytes:
            self._spill(key, entry)
            return self.get(key, compute)
        self.memory[key] = entry
        while self.bytes > self.max_bytes:
            old_key, old = self.memory.popitem(last=False)
            self._spill(old_key, old)
        return entry

    def _spill(self, key: str, entry: Entry) -> None:
        d = self.spill_dir / hashlib.sha256(key.encode()).hexdigest()[:16]
        tmp = d.with_suffix(".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, a in entry.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
        self.spilled[key] = d

    def clear(self) -> None:
        self.memory.clear()
        for d in self.spilled.values():
            shutil.rmtree(d, ignore_errors=True)
        self.spilled.clear()
        self.hits = self.misses = 0


class DiskArrays:
    """Arrays that are a pure function of their key, kept as .npy files under `root` for every process
    and every later run on this machine: the synthetic eval clips, the same for every rung and
    checkpoint of a sweep, were rendered again in each Ray worker process that evaluated (~30 s of CPU
    for the local ladder's 4736 clips, benchmarks/ladder_phases.py). `version` goes into every key:
    what else decides the arrays (the renderer's source). Entries over `max_bytes` are not kept.
    A half-written entry is never read: each is written to its own temp dir, then renamed."""

    def __init__(self, root: Path, version: str, max_bytes: int = 1 << 30):
        self.root, self.version, self.max_bytes = Path(root), version, max_bytes

    def path(self, key: str) -> Path:
        return self.root / hashlib.sha256(f"{self.version}/{key}".encode()).hexdigest()[:32]

    def get(self, key: str, compute: Callable[[], Entry]) -> Entry:
        d = self.path(key)
        if d.is_dir():
            return {f.stem: np.load(f, allow_pickle=False) for f in sorted(d.glob("*.npy"))}
        entry = compute()
        if nbytes(entry) <= self.max_bytes:
            tmp = d.with_name(f"{d.name}.tmp-{os.getpid()}")
            try:
                tmp.mkdir(parents=True, exist_ok=True)
                for name, a in entry.items():
                    np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
                tmp.rename(d)
            except OSError:  # another process kept it first, or no room: the entry is still good
                shutil.rmtree(tmp, ignore_errors=True)
        return entry


# One cache per process, so tasks evaluated one after another (and Ray workers reused
# across eval tasks) share clips and features. SWEEP4D_EVAL_CACHE_BYTES bounds its memory.
CACHE = ArrayCache(
    max_bytes=int(os.environ.get("SWEEP4D_EVAL_CACHE_BYTES", 1 << 30)),
    spill_dir=os.environ.get("SWEEP4D_EVAL_CACHE_DIR") or None,
)
