"""`sweep status`: a sweep's state read from disk alone, safe while a sweep runs. The rule
that names a rung's state lives here, for `sweep status` and the live table alike."""

from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from contracts.layout import RungPaths, SweepPaths, read_json, read_jsonl
from contracts.spec import RungConfig, SweepSpec
from contracts.storage import check_reachable, runs_root
from orchestrator import checkpoint as ckpt
from orchestrator.policy import eval_steps, rerun_action
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


def rung_state(status: dict, rank0: dict, *, trained: bool, driver_alive: bool) -> str:
    """pending | queued | running | done | failed | interrupted, from the rung's records.

    status: the driver's status.json; rank0: workers/rank0.json; trained: the final checkpoint
    is sealed. A rung the driver submitted but whose rank-0 worker has not started since (its
    record is older than the submission) is waiting for its placement group: queued.
    """
    state = status.get("state", "pending")
    if trained:
        return "failed" if state == "failed" else "done"
    if state != "running":
        return state
    if not driver_alive:
        return "interrupted"  # the driver is gone; the next `sweep run` resumes it
    if rank0.get("time", 0) < status.get("submitted", 0):
        return "queued"
    return "running"


def read_rung_state(rung: RungConfig, runs_root: Path, driver_alive: bool) -> str:
    paths = RungPaths.for_rung(rung, runs_root)
    return rung_state(
        read_json(paths.status) or {},
        read_json(paths.worker(0)) or {},
        trained=ckpt.is_trained(rung, runs_root),
        driver_alive=driver_alive,
    )


def restart_count(paths: RungPaths) -> int:
    """How many times Ray Train restarted the rung's worker group after a failure, over all runs."""
    return len(read_jsonl(paths.restarts))


def status_rows(spec: SweepSpec, runs_dir: Path | str | None = None) -> list[dict]:
    """One row per rung: rung, state, step, total, last_checkpoint, evals_done, evals_total,
    restarts, failures (a list of reasons), eta_s (seconds, or None). runs_dir: None for the spec's
    `storage:` (read from any machine that can read the store), else runs/."""
    root = runs_root(runs_dir, spec.storage)
    check_reachable(root, write=False)
    driver_alive = SweepLock(SweepPaths.of(root, spec.name).lock).holder() is not None
    rows = []
    for r in spec.rungs():
        paths = RungPaths.for_rung(r, root)
        st = read_json(paths.status) or {}
        prog = read_json(paths.progress) or {}
        state = read_rung_state(r, root, driver_alive)
        sealed = ckpt.list_steps(paths.root)
        ev = spec.evals
        evals = [(s, t, m) for s in planned_checkpoints(spec, r) for t in ev.tasks for m in ev.modes]
        recs = [read_json(paths.eval_record(s, t, m)) or {} for s, t, m in evals]
        failures = [rec.get("reason", "") for rec in recs if rec.get("state") == "failed"]
        if st.get("reason") and state == "failed":
            failures.insert(0, st["reason"])
        step = prog.get("step", sealed[-1].step if sealed else 0)
        rate = prog.get("clips_per_s")
        fresh = time.time() - prog.get("time", 0) < 120
        eta = (r.steps - step) * r.batch_size / rate if state == "running" and rate and fresh else None
        rows.append(
            {
                "rung": r.key,
                "state": state,
                "step": step,
                "total": r.steps,
                "last_checkpoint": sealed[-1].step if sealed else None,
                "evals_done": sum(rec.get("state") == "done" for rec in recs),
                "evals_total": len(evals),
                "restarts": restart_count(paths),
                "failures": failures,
                "eta_s": eta,
            }
        )
    return rows


def status_table(sweep: str, rows: list[dict]) -> Table:
    """`sweep status`'s table of `status_rows`."""
    t = Table(title=f"sweep '{sweep}'")
    for col in ("rung", "state", "step", "last checkpoint", "evals", "restarts", "failures", "ETA"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["rung"],
            r["state"],
            f"{r['step']}/{r['total']}",
            str(r["last_checkpoint"] or "-"),
            f"{r['evals_done']}/{r['evals_total']}",
            str(r["restarts"]),
            "; ".join(r["failures"])[:120],
            duration(r["eta_s"]),
        )
    return t


def describe_rerun(spec: SweepSpec, rungs: list[RungConfig], root) -> list[dict]:
    """What `sweep run` would do with each rung, from disk alone (its --dry-run, and status)."""
    rows = []
    for r in rungs:
        paths = RungPaths.for_rung(r, root)
        sealed = [f.step for f in ckpt.list_steps(paths.root)]
        done_evals = sum(
            1
            for s in eval_steps(spec, r, sealed)
            for t in spec.evals.tasks
            for m in spec.evals.modes
            if (read_json(paths.eval_record(s, t, m)) or {}).get("state") == "done"
        )
        rows.append(
            {
                "rung": r.key,
                "action": rerun_action(ckpt.is_trained(r, root), sealed),
                "steps": r.steps,
                "checkpoints": len(sealed),
                "evals_done": done_evals,
            }
        )
    return rows


def live_row(rung: RungConfig, root, evals: tuple[int, int, int], reason: str | None) -> dict:
    """One row of the driver's live table (evals: done, total, failed); this process is the driver."""
    paths = RungPaths.for_rung(rung, root)
    prog = read_json(paths.progress) or {}
    step = prog.get("step", 0)
    rate = prog.get("clips_per_s")
    state = read_rung_state(rung, root, driver_alive=True)
    eta = (rung.steps - step) * rung.batch_size / rate if rate and state == "running" else None
    done, total, failed = evals
    return {
        "rung": rung.key,
        "state": state,
        "step": step,
        "total": rung.steps,
        "loss": prog.get("loss"),
        "clips_per_s": rate,
        "eta_s": eta,
        "evals_done": done,
        "evals_total": total,
        "evals_failed": failed,
        "restarts": restart_count(paths),
        "reason": reason,
    }
