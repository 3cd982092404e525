"""The chaos script's quick variant: one rung (8 steps, evaluated at step 8 on two tasks), one sweep run
and no rerun, in which a Ray Train worker, the MLflow tracker actor and an eval worker are each
SIGKILLed once, in that order; each kill waits until its target is alive, so each lands by construction:
the train worker as soon as the worker group exists; the tracker 1-3 s later (seed 3's draw), while
Ray Train restarts the group (~15 s), so the points of the steps after it go through the restarted
tracker; the eval last, as soon as an eval task runs, and the run cannot end before one runs.
(The tracker was last until stop 31, timed to land while the killed eval's retry ran; retries got
fast enough, ~1 s, that the run sometimes ended first.)
Every check of benchmarks/chaos.py must pass against an uninterrupted run: loss curves bitwise equal,
every eval done and started again only when a kill found it running, MLflow (as the run left it, no
`sweep sync` first) equal to the disk, one MLflow run per rung, the results table equal.
benchmarks/chaos.py runs the 10-kill version over every kind, driver included, on two rungs. Its output
is a timeline (seconds since it started: cluster up, each kill, each restart, the evals); `pytest -s`
shows it.

Driver kills are not made here (each costs a `sweep run` rerun and its Ray start-up); they are checked
by tests/test_sweep.py::test_sigterm_driver_sigkill_and_tracker_kill_lose_nothing_and_the_rerun_resumes
(a SIGTERM flushes; a SIGKILL mid-rung, then the rerun resumes from a sealed checkpoint, nothing retrained
or re-evaluated, one MLflow run per rung, MLflow equal to the disk); that a new fit resumed
from a checkpoint trains bitwise as an uninterrupted one by tests/test_pretrain.py::
test_truncated_latest_checkpoint_falls_back_to_previous_with_warning.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.minutes]
ROOT = Path(__file__).resolve().parent.parent


def test_three_kills_lose_nothing_and_repeat_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "chaos.py"),
            "--kills",
            "3",
            "--kinds",
            "train_worker,tracker,eval",
            "--in-order",
            "--seed",
            "3",
            "--steps",
            "8",
            "--delay",
            "1,3",
            "--work",
            str(tmp_path / "w"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(run.stdout)  # the timeline
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS: every check" in run.stdout, run.stdout
    # Each kind hit once, all absorbed by the one `sweep run`, and the killed eval was run again.
    assert "kills made: 3 (1 eval, 1 tracker, 1 train_worker); sweep runs: 1;" in run.stdout, run.stdout
    assert re.search(r"evals re-run after a kill: [1-9]", run.stdout), run.stdout
