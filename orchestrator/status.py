"""`sweep status`: a sweep's state read from disk alone, safe while a sweep runs."""

from __future__ import annotations

import time
from pathlib import Path

from contracts.layout import RungPaths, SweepPaths, read_json
from contracts.spec import RungConfig, SweepSpec
from orchestrator import checkpoint as ckpt
from orchestrator.progress import duration
from orchestrator.state import SweepLock


def planned_checkpoints(spec: SweepSpec, rung: RungConfig) -> list[int]:
    every = set(range(rung.checkpoint_interval, rung.steps + 1, rung.checkpoint_interval)) | {rung.steps}
    which = spec.evals.checkpoints
    if which == "final":
        return [rung.steps]
    if which == "all":
        return sorted(every)
    return sorted(s for s in which if s in every)


def status_rows(spec: SweepSpec, runs_root: Path) -> list[dict]:
    root = runs_root.resolve()
    driver_alive = SweepLock(SweepPaths.of(root, spec.name).lock).holder() is not None
    rows = []
    for r in spec.rungs():
        paths = RungPaths.for_rung(r, root)
        st = read_json(paths.status) or {}
        prog = read_json(paths.progress) or {}
        state = st.get("state", "pending")
        if ckpt.is_trained(r, root):
            state = "done" if state != "failed" else state
        elif state == "running" and not driver_alive:
            state = "interrupted"  # the driver is gone; the next `sweep run` resumes it
        sealed = ckpt.list_steps(paths.root)
        evals = [
            (s, t, m)
            for s in planned_checkpoints(spec, r)
            for t in spec.evals.tasks
            for m in spec.evals.modes
        ]
        recs = [read_json(paths.eval_record(s, t, m)) or {} for s, t, m in evals]
        failures = [rec.get("reason", "") for rec in recs if rec.get("state") == "failed"]
        if st.get("reason") and state == "failed":
            failures.insert(0, st["reason"])
        step = prog.get("step", sealed[-1].step if sealed else 0)
        rate = prog.get("clips_per_s")
        fresh = time.time() - prog.get("time", 0) < 120
        eta = (
            duration((r.steps - step) * r.batch_size / rate) if state == "running" and rate and fresh else "-"
        )
        rows.append(
            {
                "rung": r.key,
                "state": state,
                "step": step,
                "total": r.steps,
                "last_checkpoint": sealed[-1].step if sealed else None,
                "evals_done": sum(rec.get("state") == "done" for rec in recs),
                "evals_total": len(evals),
                "failures": "; ".join(failures)[:120],
                "eta": eta,
            }
        )
    return rows
