"""benchmarks/ladder_phases.py's last line: the CPU-seconds a run's phases held and the shortest schedule
they allow, from records written here by hand (a timeline worked out below)."""

import sys
import textwrap
from pathlib import Path

import pytest

from contracts.layout import ReferencePaths, RungPaths, write_json
from contracts.spec import load_spec

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import ladder_phases  # noqa: E402

SPEC = """\
name: timeline
data: {frames: 4, resolution: 16, tubelet: [2, 8, 8]}
pretraining: {batch_size: 8, steps: 10, checkpoint_interval: 10, cpu_workers: 2}
ladder:
  - {name: a, width: 16, depth: 1, mlp: 32, heads: 2}
  - {name: b, width: 32, depth: 1, mlp: 64, heads: 2}
evals:
  tasks: [depth]
  checkpoints: final
references:
  - {name: pixels, source: pixels}
"""


def test_work_counts_each_fit_from_when_its_cpus_were_free_and_each_eval_for_its_task(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(textwrap.dedent(SPEC))
    spec = load_spec(spec_path)
    runs = tmp_path / "runs"
    a, b = (RungPaths.for_rung(r, runs) for r in spec.rungs())
    [ref] = spec.reference_configs()
    # On 2 CPUs, from t = 1000: the reference's eval 1000-1030 (1 CPU); rung a, submitted at 1000, gets
    # both CPUs at 1030, is in its loop at 1040 and done at 1090; its eval runs 1090-1110; rung b, submitted
    # at 1000 too, gets its CPUs when that eval ends, is in its loop at 1120 and done at 1180.
    write_json(ReferencePaths.for_reference(ref, runs).eval_record("depth", "frozen"), {
        "seconds": 30.0, "started": 1000.0, "ended": 1030.0})  # fmt: skip
    write_json(a.status, {"submitted": 1000.0, "train_s": 90.0})
    write_json(a.worker(0), {"time": 1040.0})
    write_json(a.eval_record(10, "depth", "frozen"), {"seconds": 20.0, "ended": 1110.0})
    write_json(b.status, {"submitted": 1000.0, "train_s": 180.0})
    write_json(b.worker(0), {"time": 1120.0})

    work = ladder_phases.held_work(spec, runs, ladder_phases.release_times(spec, runs))
    # a holds 2 CPUs 1030-1090 (120 CPU-s), not from its submission; b 1110-1180 (140), from the last
    # release before its loop (a's eval), not from a's end.
    assert work.fits == pytest.approx(120 + 140)
    assert work.evals == pytest.approx(20) and work.references == pytest.approx(30)
    assert work.wall_s == pytest.approx(180)  # 1000 -> 1180
    assert work.floor_s(2) == pytest.approx(155) and work.floor_s(1) == pytest.approx(310)
