"""Showing a sweep while it runs: a live rich table in a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table


def duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def restart_line(rung_key: str, restart: dict) -> str:
    """One restarts.jsonl record (orchestrator.training.engine.note_restart) as a progress line."""
    start = restart["resumed_from"]
    where = f"checkpoint {start}" if start else "the first step (no checkpoint yet)"
    return (
        f"[{rung_key}] worker died at step {restart['died_at_step']}; restarted from {where} "
        f"(attempt {restart['attempt']} of {restart['max_failures']})"
    )


def rung_table(rows: list[dict], title: str) -> Table:
    t = Table(title=title)
    for col in ("rung", "state", "step", "loss", "clips/s", "ETA", "evals", "restarts", "note"):
        t.add_column(col, justify="right" if col not in ("rung", "state", "note") else "left")
    for r in rows:
        color = {"done": "green", "failed": "red", "running": "cyan", "interrupted": "yellow"}.get(
            r["state"], "white"
        )
        evals = f"{r['evals_done']}/{r['evals_total']}" + (
            f" ({r['evals_failed']} failed)" if r.get("evals_failed") else ""
        )
        t.add_row(
            r["rung"],
            f"[{color}]{r['state']}[/]",
            f"{r['step']}/{r['total']}",
            f"{r['loss']:.4f}" if r.get("loss") is not None else "-",
            f"{r['clips_per_s']:.1f}" if r.get("clips_per_s") else "-",
            duration(r.get("eta_s")),
            evals,
            str(r.get("restarts", 0)),
            (r.get("reason") or "")[:60],
        )
    return t


class SweepDisplay:
    """Call with snapshot rows each tick. Plain mode prints a line per rung when it changes, at most
    every 10 s."""

    def __init__(self, title: str, console: Console | None = None):
        self.console = console or Console()
        self.title = title
        self.live = Live(console=self.console, refresh_per_second=2) if self.console.is_terminal else None
        self._last: dict[str, tuple] = {}
        self._last_print: dict[str, float] = {}

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def say(self, line: str) -> None:
        self.console.print(line, highlight=False, markup=False)

    def __call__(self, rows: list[dict]) -> None:
        if self.live:
            self.live.update(rung_table(rows, self.title))
            return
        now = time.time()
        for r in rows:
            sig = (r["state"], r["evals_done"], r["step"])
            changed_state = self._last.get(r["rung"], (None,))[:2] != sig[:2]
            if sig != self._last.get(r["rung"]) and (
                changed_state or now - self._last_print.get(r["rung"], 0) >= 10
            ):
                loss = f" loss {r['loss']:.4f}" if r.get("loss") is not None else ""
                rate = f" {r['clips_per_s']:.1f} clips/s" if r.get("clips_per_s") else ""
                print(
                    f"{r['rung']}: {r['state']} step {r['step']}/{r['total']}{loss}{rate} "
                    f"ETA {duration(r.get('eta_s'))} evals {r['evals_done']}/{r['evals_total']}",
                    flush=True,
                    file=sys.stdout,
                )
                self._last[r["rung"]], self._last_print[r["rung"]] = sig, now


def dry_run_table(sweep: str, rows: list[dict]) -> Table:
    """`sweep run --dry-run`: what each rung would do (Sweep.describe's rows)."""
    t = Table(title=f"dry run of sweep '{sweep}' (nothing started)")
    for col in ("rung", "action", "steps", "checkpoints", "evals done"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["rung"], r["action"], str(r["steps"]), str(r["checkpoints"]), str(r["evals_done"]))
    return t


def summary_table(sweep: str, code: int, summary: dict) -> Table:
    """The table `sweep run` ends with (Sweep.summary): each rung's state, waits, time and failures."""
    verdict = "done" if code == 0 else "finished with failures"
    t = Table(title=f"sweep '{sweep}': {verdict} in {duration(summary['wall_s'])}")
    for col in ("rung", "state", "waited", "trained in", "evals", "failure"):
        t.add_column(col)
    for r in summary["rungs"]:
        evals = f"{r['evals_done']}/{r['evals_total']}" + (
            f" ({r['evals_failed']} failed)" if r["evals_failed"] else ""
        )
        t.add_row(
            r["rung"],
            r["state"],
            duration(r["wait_s"]),
            duration(r["train_s"]),
            evals,
            "; ".join(filter(None, [r["reason"], *r["failures"]]))[:100],
        )
    return t
