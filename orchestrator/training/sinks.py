"""Rank 0's metric sinks: metrics.jsonl, system.jsonl, progress.json, MLflow, and their uploads to a store.

On a store the records cannot be appended to, so `RecordUploads` keeps their text and a background
thread puts them whole (see its docstring); `MetricSinks.flush` puts everything before a checkpoint
is sealed.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import torch

from contracts.layout import RungPaths, json_text, read_jsonl, read_text, write_json, write_text
from contracts.names import RESTARTS_METRIC, RESTARTS_TAG
from contracts.storage import is_remote

SYSTEM_EVERY_S = 10.0
RECORDS_EVERY_S = 5.0  # on a store: how often rank 0's per-step records are put, at most


def system_metrics(device: torch.device) -> dict[str, float]:
    """This worker's node, under the names MLflow's UI shows in its System metrics tab."""
    import psutil

    mem = psutil.virtual_memory()
    out = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(),
        "system/system_memory_usage_megabytes": (mem.total - mem.available) / 2**20,
        "system/system_memory_usage_percentage": mem.percent,
    }
    if device.type == "cuda":
        i = device.index or 0
        out[f"system/gpu_{i}_memory_usage_megabytes"] = torch.cuda.memory_allocated(device) / 2**20
        out[f"system/gpu_{i}_peak_memory_megabytes"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def append_jsonl(path: Path, rec: dict) -> None:
    with path.open("a") as f:  # on a store, s3fs rewrites the object: for rare records only
        f.write(json.dumps(rec) + "\n")


def keep_steps_upto(path: Path, step: int) -> None:
    """Drop the lines of a per-step JSON-lines record past `step` (they are about to be trained
    again), atomically; the kept lines are copied byte for byte, a torn last line is dropped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text(path, "".join(kept))


class RunLog:
    """One MLflow run as a worker sees it through the tracker actor (orchestrator.tracking.Tracker):
    writes are sent without waiting, reads wait for the answer."""

    def __init__(self, tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics.remote(self.run_id, metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tracker.set_tags.remote(self.run_id, tags)

    def last_steps(self) -> dict[str, int]:
        import ray

        return ray.get(self.tracker.last_steps.remote(self.run_id))


class RecordUploads:
    """Rank 0's per-step records on a store (metrics.jsonl, system.jsonl, progress.json). A store
    cannot append: a record is one PUT of its whole text, and a PUT on the training step would
    stall every rank once a step. So the text is kept here and put by a background thread, the
    newest text of each record at most every RECORDS_EVERY_S, and everything before a checkpoint is
    sealed (`flush`): a crash loses only lines past the newest checkpoint, which the resumed run
    trains, and writes, again."""

    def __init__(self):
        self.lines: dict[Path, list[str]] = {}  # a JSON-lines record's whole text
        self.texts: dict[Path, str] = {}  # a record replaced whole
        self.dirty: set[Path] = set()
        self.asked = self.done = 0  # changes made / changes put
        self.flushing = 0
        self.next_put = 0.0
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        threading.Thread(target=self._run, name="record uploads", daemon=True).start()

    def start(self, path: Path, text: str) -> None:
        with self.cond:
            self.lines[path] = text.splitlines(keepends=True)

    def append(self, path: Path, line: str) -> None:
        with self.cond:
            self.lines.setdefault(path, []).append(line)
            self._changed(path)

    def replace(self, path: Path, text: str) -> None:
        with self.cond:
            self.texts[path] = text
            self._changed(path)

    def _changed(self, path: Path) -> None:
        self.dirty.add(path)
        self.asked += 1
        self.cond.notify_all()

    def flush(self) -> None:
        """Return once every change made before the call is in the store; raise if a put failed."""
        with self.cond:
            target = self.asked
            self.flushing += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.done >= target or self.error is not None)
            self.flushing -= 1
        if self.error is not None:
            raise RuntimeError(f"a run record was not stored: {self.error}") from self.error

    def _run(self) -> None:
        while True:
            with self.cond:
                while not (self.dirty and (self.flushing or time.monotonic() >= self.next_put)):
                    self.cond.wait(max(0.05, self.next_put - time.monotonic()) if self.dirty else None)
                upto, paths, self.dirty = self.asked, self.dirty, set()
                # joined here, at most once a put, not once a step
                batch = {p: self.texts[p] if p in self.texts else "".join(self.lines[p]) for p in paths}
            try:
                for path, text in batch.items():
                    write_text(path, text)  # retried (contracts.layout)
            except BaseException as e:  # raised by flush(), in the training or upload thread
                with self.cond:
                    self.error = e
                    self.cond.notify_all()
                return
            with self.cond:
                self.done, self.next_put = upto, time.monotonic() + RECORDS_EVERY_S
                self.cond.notify_all()


class MetricSinks:
    """Where rank 0 sends each step's metrics: metrics.jsonl (and system.jsonl) first, then MLflow
    (through the tracker actor), and progress.json.

    After a resume, each keeps one value per step: metrics.jsonl drops the steps past the
    checkpoint (they are trained again), and MLflow, whose log_batch only appends to a metric's
    history, is sent no step it already holds for that key. The replayed values are bitwise the
    same, so what is kept is what an uninterrupted run would have logged.

    `mlflow` is a RunLog (or anything with its three methods), or None to skip MLflow.
    """

    def __init__(
        self,
        paths: RungPaths,
        total_steps: int,
        device: torch.device,
        mlflow=None,
        logged: dict[str, int] | None = None,
    ):
        self.paths, self.total, self.device, self.mlflow = paths, total_steps, device, mlflow
        self.logged = dict(logged or {})  # metric key -> highest step MLflow already holds
        self.uploads = None  # on a store: the records go up in the background
        if is_remote(paths.root):
            self.uploads = RecordUploads()
            for path in (paths.metrics, paths.system):
                try:
                    self.uploads.start(path, read_text(path))
                except FileNotFoundError:
                    self.uploads.start(path, "")
        self.last_system = 0.0
        system_metrics(device)  # psutil's CPU figure is "since the last call": start the clock

    @classmethod
    def open(
        cls, paths: RungPaths, total_steps: int, device: torch.device, mlflow, resumed_from: int
    ) -> MetricSinks:
        keep_steps_upto(paths.metrics, resumed_from)
        keep_steps_upto(paths.system, resumed_from)
        logged = mlflow.last_steps() if mlflow is not None else {}  # once, not every step
        return cls(paths, total_steps, device, mlflow, logged)

    def log(self, step: int, metrics: dict[str, float], loss: float) -> None:
        # Disk first, then MLflow: what MLflow holds is always on disk, and what a crash kept
        # from MLflow (a lost tracker buffer) the next reconciliation restores from disk.
        system = None
        if time.monotonic() - self.last_system >= SYSTEM_EVERY_S or step == self.total:
            system = system_metrics(self.device)
            self.last_system = time.monotonic()
            self._append(self.paths.system, {"step": step, **system})
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        self._append(self.paths.metrics, {"step": step, **finite})
        if self.mlflow is not None:
            if system:
                self._to_mlflow(system, step)
            self._to_mlflow(finite, step)  # the same points as the disk record
        progress = {
            "step": step,
            "total": self.total,
            "loss": loss,
            "clips_per_s": metrics["train/clips_per_s"],
            "time": time.time(),
        }
        if self.uploads:
            self.uploads.replace(self.paths.progress, json_text(progress))
        else:
            write_json(self.paths.progress, progress)

    def _append(self, path: Path, rec: dict) -> None:
        if self.uploads:
            self.uploads.append(path, json.dumps(rec) + "\n")
        else:
            append_jsonl(path, rec)

    def flush(self) -> None:
        """On a store: put every record logged so far (before a checkpoint is sealed, at the end)."""
        if self.uploads:
            self.uploads.flush()

    def _to_mlflow(self, metrics: dict[str, float], step: int) -> None:
        new = {k: v for k, v in metrics.items() if step > self.logged.get(k, 0)}
        if new:
            self.mlflow.log_metrics(new, step)

    def log_restart(self, restart: dict) -> None:
        """The restart count, as a metric at the step the failed group reached and as a tag."""
        if self.mlflow is None:
            return
        count = len(read_jsonl(self.paths.restarts))
        self.mlflow.log_metrics({RESTARTS_METRIC: count}, restart["died_at_step"])
        self.mlflow.set_tags({RESTARTS_TAG: str(count)})
