"""The sweep spec: valid specs resolve per rung; malformed ones are one clear error, exit 2, nothing
written."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts.spec import SpecError, load_spec
from orchestrator.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

GOOD = """\
name: t
data: {frames: 8, resolution: 32, tubelet: [2, 8, 8]}
pretraining:
  batch_size: 8
  steps: 10
  decoder: {width: 32, depth: 1, mlp: 64, heads: 2}
ladder:
  - {name: a, width: 32, depth: 2, mlp: 64, heads: 2}
  - {name: b, width: 64, depth: 2, mlp: 128, heads: 4, steps: 20, gpus: 0}
"""


def write(tmp_path, text, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_spec_resolves_defaults_and_overrides(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    a, b = spec.rungs()
    assert (a.steps, b.steps) == (10, 20)
    assert a.model.encoder.width == 32 and a.model.frames == 8 and a.model.tubelet == (2, 8, 8)
    assert a.precision == "fp32" and a.workers == 2 and a.micro_batch_size == 4
    assert a.key.startswith("a-") and len(a.key) == len("a-") + 6


def test_shipped_sweeps_are_valid():
    assert len(load_spec(REPO / "sweeps/size_ladder.yaml").ladder) == 7
    local = load_spec(REPO / "sweeps/local_ladder.yaml")
    params = [r.encoder_params for r in local.rungs()]
    assert len(params) >= 4 and max(params) / min(params) >= 30


def test_identity_ignores_where_it_runs_but_not_what_it_computes(tmp_path):
    base = load_spec(write(tmp_path, GOOD)).rungs()[0]
    more_workers = load_spec(
        write(
            tmp_path,
            GOOD.replace(
                "batch_size: 8",
                "batch_size: 8\n  cpu_workers: 4\n  checkpoint_interval: 3\n  max_failures: 7",
            ),
            "w.yaml",
        )
    ).rungs()[0]
    other_uri = load_spec(write(tmp_path, "tracking: {uri: 'sqlite:///x.db'}\n" + GOOD, "u.yaml")).rungs()[0]
    decoders = load_spec(write(tmp_path, GOOD.replace("data: {", "data: {workers: 3, "), "d.yaml")).rungs()[0]
    other_lr = load_spec(
        write(tmp_path, GOOD.replace("steps: 10", "steps: 10\n  optimizer: {lr: 0.01}"), "lr.yaml")
    ).rungs()[0]
    other_seed = load_spec(
        write(tmp_path, GOOD.replace("steps: 10", "steps: 10\n  seed: 1"), "s.yaml")
    ).rungs()[0]
    assert more_workers.workers == 4 and decoders.data.workers == 3
    assert base.key == more_workers.key == other_uri.key == decoders.key
    # the trainer gets its rung through to_dict: data.workers travels with it, outside the identity
    from contracts.spec import RungConfig

    assert RungConfig.from_dict(decoders.to_dict()).data.workers == 3
    assert (base.max_failures, RungConfig.from_dict(more_workers.to_dict()).max_failures) == (2, 7)
    assert len({base.key, other_lr.key, other_seed.key}) == 3


def test_held_out_clips_keep_existing_hashes_at_their_default(tmp_path):
    from contracts.spec import RungConfig

    base = load_spec(write(tmp_path, GOOD)).rungs()[0]

    def with_val(n):
        text = GOOD.replace("steps: 10", f"steps: 10\n  val_clips: {n}")
        return load_spec(write(tmp_path, text, f"{n}.yaml")).rungs()[0]

    same, fewer = with_val(128), with_val(32)
    assert "val_clips" not in base.identity() and base.key == same.key  # older rungs keep their dir
    assert fewer.key != base.key and RungConfig.from_dict(fewer.to_dict()) == fewer
    assert RungConfig.from_dict(base.to_dict()).val_clips == 128


def test_task_readout_changes_only_the_fields_it_names(tmp_path):
    evals = (
        "evals:\n"
        "  readout: {width: 32, epochs: 4}\n"
        "  task_readout: {point_tracking: {epochs: 20, lr: 5.0e-4}}\n"
    )
    ev = load_spec(write(tmp_path, GOOD + evals)).evals
    tracking, depth = ev.readout_for("point_tracking"), ev.readout_for("depth")
    assert (tracking.epochs, tracking.lr, tracking.width) == (
        20,
        5e-4,
        32,
    )  # width from `readout`, not the default
    assert depth == ev.readout and (depth.epochs, depth.width) == (4, 32)


BAD = {
    "yaml_syntax": (GOOD.replace("ladder:", "ladder: [unclosed"), "YAML syntax error", None),
    "unknown_key": (GOOD.replace("steps: 10", "steps: 10\n  mask_ratoi: 0.9"), "pretraining.mask_ratoi", 6),
    "wrong_type": (GOOD.replace("batch_size: 8", "batch_size: eight"), "pretraining.batch_size", 4),
    "heads_not_dividing": (
        GOOD.replace("width: 64, depth: 2, mlp: 128, heads: 4", "width: 64, depth: 2, mlp: 128, heads: 5"),
        "ladder[1].heads",
        9,
    ),
    "tubelet_not_dividing": (GOOD.replace("frames: 8", "frames: 7"), "data.tubelet", 2),
    "zero_size": (GOOD.replace("width: 32, depth: 2", "width: 0, depth: 2"), "ladder[0].width", 8),
    "negative_size": (
        GOOD.replace(
            "depth: 2, mlp: 64, heads: 2}\n  - {name: b", "depth: -1, mlp: 64, heads: 2}\n  - {name: b"
        ),
        "ladder[0].depth",
        8,
    ),
    "duplicate_rung": (GOOD.replace("name: b", "name: a"), "ladder[1].name", 9),
    "unknown_task_readout": (
        GOOD + "evals:\n  task_readout: {tracking: {epochs: 3}}\n",
        "evals.task_readout.tracking",
        11,
    ),
    "bad_task_readout": (
        GOOD + "evals:\n  task_readout: {depth: {epochs: 0}}\n",
        "evals.task_readout.depth.epochs",
        11,
    ),
    "unknown_size": (
        GOOD.replace("name: a, width: 32, depth: 2, mlp: 64, heads: 2", "name: a, size: XXL"),
        "ladder[0].size",
        8,
    ),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_malformed_spec_exits_2_naming_field_and_line_and_writes_nothing(
    tmp_path, monkeypatch, case, command
):
    text, field, line = BAD[case]
    spec = write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [command, str(spec)])
    assert result.exit_code == 2, result.output
    msg = result.output
    assert field in msg
    assert str(spec) in msg
    if line is not None:
        assert f"{spec}:{line}:" in msg
    assert "Traceback" not in msg
    assert not (tmp_path / "runs").exists()


def test_missing_spec_file_is_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["plan", "nope.yaml"])
    assert result.exit_code == 2 and "nope.yaml" in result.output


def test_real_console_script_gives_one_message_no_traceback(tmp_path):
    spec = write(tmp_path, BAD["unknown_key"][0])
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(spec)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "mask_ratoi" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "runs").exists()


def test_spec_error_lists_every_problem(tmp_path):
    text = GOOD.replace("frames: 8", "frames: 7").replace("name: b", "name: a")
    with pytest.raises(SpecError) as e:
        load_spec(write(tmp_path, text))
    assert "data.tubelet" in e.value.message and "ladder[1].name" in e.value.message


@pytest.mark.parametrize("trained_by", [1, 2])
def test_a_rung_resumes_only_with_the_worker_count_its_checkpoints_were_trained_with(
    tmp_path, monkeypatch, trained_by
):
    """Batches, masks and ZeRO shards are per rank and the worker count is not in a rung's key: a
    checkpoint of rung a (2 workers in GOOD) sealed by 1 worker is refused before Ray starts, naming
    both counts and the way out; one sealed by 2 workers resumes (the dry run lists it)."""
    from contracts.layout import RungPaths
    from orchestrator.checkpoint import seal

    spec = write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    a = load_spec(spec).rungs()[0]
    assert a.workers == 2
    paths = RungPaths.for_rung(a, tmp_path / "runs")
    staging = paths.root / "staging"
    (staging / "rank0").mkdir(parents=True)
    (staging / "rank0" / "shard.pt").write_bytes(b"x")
    final = paths.checkpoints / "step_00000005"
    final.parent.mkdir(parents=True)
    seal(staging, final, 5, a.key, {"world_size": trained_by})
    result = runner.invoke(app, ["run", str(spec), "--dry-run"])
    if trained_by == a.workers:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    msg = " ".join(result.output.split())  # the console wraps long lines
    assert f"rung {a.key} was trained to step 5 by 1 worker (" in msg, msg
    assert "this spec gives it 2" in msg and str(paths.root) in msg, msg
    assert "Traceback" not in msg
    assert (final / "manifest.json").exists()  # nothing lost
