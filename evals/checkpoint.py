"""One checkpoint's eval outside a sweep (`sweep eval`): find its export, its data, score each task.

A sweep fans the same `evals.run.evaluate` out as Ray tasks; this is the one-process entry for a
checkpoint directory, its export/, a store URI, or an imported encoder. Readout and world settings
come from a spec when given, else from the export's own rung.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from contracts.layout import EXPORT
from contracts.names import se_name, se_of
from contracts.spec import Data, EvalData, Evals, SpecError, load_spec
from contracts.storage import check_reachable, is_remote, local_copy, root_of
from contracts.tasks import MODES, TASK_NAMES
from models.export import ExportError, export_dir


@dataclass(frozen=True)
class TaskScore:
    """One task's metrics on one checkpoint, and which data they came from."""

    task: str
    dataset: str
    split: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class CheckpointEval:
    checkpoint: str  # as the user named it
    mode: str
    scores: list[TaskScore]

    def rows(self) -> list[tuple[str, str, str, str, float | None, float | None, float | None]]:
        """(task, dataset, split, metric, value, standard error, trivial baseline), one per metric; a
        metric's `_se` and `baseline_` entries are its columns, not rows of their own."""
        return [
            (s.task, s.dataset, s.split, k, v, s.metrics.get(se_name(k)), s.metrics.get(f"baseline_{k}"))
            for s in self.scores
            for k, v in s.metrics.items()
            if not k.startswith("baseline_") and se_of(k) is None
        ]


def evaluate_checkpoint(
    checkpoint: str,
    tasks: list[str],
    mode: str = "frozen",
    spec: Path | None = None,
    data: list[str] | None = None,
    progress: Callable[[str], AbstractContextManager] = lambda what: nullcontext(),
) -> CheckpointEval:
    """Every input is checked (tasks, mode, --data FORMAT:PATH, the export) before any model loads.
    `progress(what)` is entered around each task's eval (the CLI's spinner)."""
    bad = [t for t in tasks if t not in TASK_NAMES]
    if bad or mode not in MODES:
        raise SpecError(
            f"unknown task {bad} or mode {mode!r}; tasks: {', '.join(TASK_NAMES)}; modes: {', '.join(MODES)}"
        )
    on_disk = dict(EvalData.parse(d) for d in data or [])
    unused = [t for t in on_disk if t not in tasks]
    if unused:
        raise SpecError(f"--data gives data for {', '.join(unused)}, which no --task names")
    for d in on_disk.values():
        if not Path(d.path).exists():
            raise SpecError(f"--data {d.format}:{d.path}: no such file or folder")
    where_it_is = root_of(checkpoint)
    check_reachable(where_it_is, write=False)
    if is_remote(where_it_is) and (where_it_is / EXPORT).is_dir():
        where_it_is = where_it_is / EXPORT  # the export alone, not the ZeRO shards beside it
    local = local_copy(where_it_is)  # on a store, streamed into this machine's cache
    rung_json = export_dir(local) / "rung.json"
    if not rung_json.is_file():
        raise ExportError(
            f"{checkpoint}: no encoder export here (expected export/encoder.safetensors and rung.json)"
        )
    if spec is not None:
        s = load_spec(spec)
        evals, world = s.evals, s.data
    else:
        evals, world = Evals(), Data(**json.loads(rung_json.read_text()).get("data", {}))
    datasets = {**evals.data, **on_disk}
    from evals.run import evaluate  # torch and the tasks load only once the inputs are known good

    results, about = {}, {}
    for name in tasks:  # clips and frozen features are cached, so tasks still share them
        with progress(f"evaluating {checkpoint} on {name} ({mode})"):
            results[name] = evaluate(
                str(local),
                name,
                mode=mode,
                readout=evals.readout_for(name),
                data=world,
                datasets=datasets,
                info=about,
            )
    scores = [TaskScore(n, about[n]["dataset"], about[n]["split"], m) for n, m in results.items()]
    return CheckpointEval(checkpoint, mode, scores)
