"""The chaos script's quick variant: 3 kills over every kind with a fixed seed, every check must pass
(benchmarks/chaos.py runs the 10-kill version)."""

import os
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
            "--seed",
            "3",
            "--steps",
            "16,24",
            "--delay",
            "4,10",
            "--work",
            str(tmp_path / "w"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "kills made: 3 " in run.stdout and "PASS: every check" in run.stdout, run.stdout
