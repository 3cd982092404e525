"""Pretraining a rung for real: Ray Train + DeepSpeed ZeRO-3 over gloo on 2 CPU workers, MLflow on SQLite."""

import json
import os
import re
import shutil
import signal
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import BUCKET
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from contracts.layout import RungPaths
from contracts.names import (
    CKPT_WAIT_METRIC,
    RESTARTS_METRIC,
    RESTARTS_TAG,
    RUNG_KEY_TAG,
    STATUS_TAG,
    VAL_LOSS_METRIC,
)
from contracts.spec import load_spec
from contracts.storage import local_copy
from models.export import load_encoder
from orchestrator import checkpoint as ckpt
from orchestrator.pretrain import fit_rung
from orchestrator.scheduler import open_sweep
from orchestrator.status import status_rows

pytestmark = pytest.mark.slow

SPEC = """\
name: pt
data: {frames: 4, resolution: 16, tubelet: [2, 8, 8], world: {objects: 2, points: 8}}
pretraining:
  mask_ratio: 0.5
  decoder: {width: 16, depth: 1, mlp: 32, heads: 2}
  optimizer: {lr: 3.0e-3}
  schedule: {warmup_steps: 2}
  batch_size: 8
  micro_batch_size: 2
  steps: 12
  checkpoint_interval: 4
  cpu_workers: 2
ladder:
  - {name: tiny, width: 32, depth: 2, mlp: 64, heads: 2}
evals: {tasks: []}
"""


def sweep(root: Path, spec_text: str = SPEC, only=None, on_start=None) -> tuple[int, dict[str, Path]]:
    """Run `sweep train`'s code path in-process with `root` as the working directory, for the rungs
    named in `only` (default: the ladder), which train concurrently. -> the exit code and each rung's
    run directory by rung name (under runs/, or on the spec's `storage:`)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.yaml").write_text(textwrap.dedent(spec_text))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        sw = open_sweep(Path("spec.yaml"), only=only, train_only=True)
        if on_start:
            on_start(sw)
        code = sw.run(None)
    finally:
        os.chdir(cwd)
    return code, {r.name: RungPaths.for_rung(r, sw.root).root for r in sw.rungs}


def train(root: Path, spec_text: str = SPEC, on_start=None, only=None) -> tuple[int, Path]:
    """`sweep` for one rung: the exit code and the (first) rung's run directory."""
    code, dirs = sweep(root, spec_text, only, on_start)
    return code, next(iter(dirs.values()))


def losses(run_dir: Path) -> dict[int, float]:
    """Loss per step; after a resume the re-run steps overwrite the earlier ones."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["train/loss"]
    return out


def val_losses(run_dir: Path) -> dict[int, float]:
    """The held-out loss per checkpoint step, from metrics.jsonl; each matches its checkpoint's manifest."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if VAL_LOSS_METRIC in rec:
            out[rec["step"]] = rec[VAL_LOSS_METRIC]
    for f in ckpt.list_steps(run_dir):
        assert json.loads((f.path / "manifest.json").read_text())["val_loss"] == out[f.step]
    return out


# μP (per-matrix LRs: optimiser param groups over ZeRO-3 partitioned parameters), with the rung
# `tiny` scaled from the base `narrow`, which is never trained here.
MUP_SPEC = SPEC.replace(
    "  cpu_workers: 2\n", "  cpu_workers: 2\n  scaling: {base: narrow, lr: {rule: mup}}\n"
).replace("ladder:\n", "ladder:\n  - {name: narrow, width: 16, depth: 2, mlp: 32, heads: 1}\n")


def kill_rank1(rung: str, killed: dict, said: list | None = None):
    """An `on_start` that SIGKILLs `rung`'s rank-1 worker once the rung has a checkpoint, recording
    its pid and the newest checkpoint step then in `killed` (and the driver's progress lines in `said`)."""

    def on_start(sweep):
        key = next(r.key for r in sweep.rungs if r.name == rung)
        run_dir = sweep.root / "pt" / key
        if said is not None:
            sweep.say = said.append

        def watch():
            deadline = time.time() + 240
            while time.time() < deadline:
                rank1 = run_dir / "workers" / "rank1.json"
                if ckpt.list_steps(run_dir) and rank1.exists():
                    pid = json.loads(rank1.read_text())["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"], killed["after"] = pid, ckpt.list_steps(run_dir)[-1].step
                    return
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()

    return on_start


# The μP rung `tiny` trained once, uninterrupted, for the session: the reference every test here
# compares with, and tests/test_gpu_path_on_cpu.py's fp32 / ZeRO-3 / no-checkpointing reference (one
# fit fewer in the suite). By the directory its cluster's workers count activation checkpointing in
# (that module's cluster; None: conftest's): the gpu-path module needs a run whose workers were counted.
_REFERENCES: dict = {}


def fit(root: Path, spec_text: str = MUP_SPEC, rung: str = "tiny") -> Path:
    """Train (or resume) `rung` through `fit_rung`, what a sweep runs for each rung, less the sweep
    around it (its MLflow store and tracker actor cost a start-up: ~30 s a sweep on 2 cores).
    Ray must be up. -> its run dir, root/runs/<sweep>/<key>."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.yaml").write_text(textwrap.dedent(spec_text))
    config = load_spec(root / "spec.yaml").rung(rung)
    outcome = fit_rung(config, root / "runs")
    assert outcome.ok and outcome.step == config.steps, outcome
    return RungPaths.for_rung(config, root / "runs").root


def reference_fit(tmp_path_factory, calls: Path | None = None) -> tuple[Path, Path]:
    """The reference: MUP_SPEC's `tiny`, trained through `fit`. -> its root, run dir."""
    if calls is None and _REFERENCES:
        return next(iter(_REFERENCES.values()))
    if calls not in _REFERENCES:
        root = tmp_path_factory.mktemp("reference")
        _REFERENCES[calls] = root, fit(root)
    return _REFERENCES[calls]


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    return reference_fit(tmp_path_factory)


def test_zero3_partitions_parameters_and_loss_goes_down(reference):
    _, run_dir = reference
    ranks = [json.loads((run_dir / "workers" / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = ranks[0]["total_param_elements"]
    for rec in ranks:  # each rank holds about half of the elements, not all of them
        assert 0.4 * total <= rec["local_param_elements"] <= 0.6 * total, rec
    assert sum(rec["local_param_elements"] for rec in ranks) >= total
    assert ranks[0]["pid"] != ranks[1]["pid"]
    loss = losses(run_dir)
    assert sorted(loss) == list(range(1, 13))
    assert sum(loss[s] for s in (10, 11, 12)) / 3 < 0.9 * loss[1]
    assert [f.step for f in ckpt.list_steps(run_dir)] == [4, 8, 12]
    assert all(ckpt.verify(f.path) is None for f in ckpt.list_steps(run_dir))


def test_export_loads_into_plain_encoder_with_the_engines_features(reference):
    _, run_dir = reference
    final = RungPaths(run_dir).checkpoint(12)
    encoder, rung = load_encoder(final)
    assert type(encoder).__name__ == "Encoder" and rung["name"] == "tiny"
    probe = load_file(str(final / "export" / "probe.safetensors"))
    from models.mae import normalize_video

    every = torch.arange(encoder.cfg.num_tokens)[None]
    with torch.no_grad():
        mine = encoder(normalize_video(probe["video"]), every)
    assert torch.allclose(mine, probe["features"], atol=1e-5), (mine - probe["features"]).abs().max()


def rung_run(root: Path, run_dir: Path):
    """The rung's MLflow run, and a client on the sweep's store."""
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pt")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUNG_KEY_TAG}` = '{run_dir.name}'")
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_child_run_holds_params_and_per_step_metrics(killed_on_s3):
    """The sweep's MLflow run of a rung (the S3 kill's: the only sweep here that trains one to the end;
    its restart is checked by test_on_s3_a_killed_worker_...)."""
    root, run_dir = killed_on_s3["root"], killed_on_s3["run_dir"]
    client, run = rung_run(root, run_dir)
    assert run.info.run_name.startswith("tiny-") and run.data.tags[STATUS_TAG] == "finished"
    p = run.data.params
    assert (p["width"], p["depth"], p["heads"], p["mlp"]) == ("32", "2", "2", "64")
    assert int(p["encoder_params"]) > 0 and int(p["flops_per_clip"]) > 0
    for key in (
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/clips_per_s",
        "train/tokens_per_s",
        "train/tflops",
    ):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(1, 13)), key
    lrs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/lr")}
    assert lrs[1] < lrs[2] and lrs[12] < lrs[3]  # warmup, then cosine decay
    # The held-out loss at every checkpoint (and only there), the same in MLflow and on disk; it falls.
    val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, VAL_LOSS_METRIC)}
    assert val == val_losses(run_dir) and sorted(val) == [4, 8, 12] and val[12] < val[4]


def on_s3(prefix: str, spec_text: str = SPEC) -> str:
    return spec_text.replace("name: pt\n", f"name: pt\nstorage: s3://{BUCKET}/{prefix}\n")


@pytest.fixture(scope="module")
def killed_on_s3(ray_cluster, s3, tmp_path_factory):
    """One sweep training MUP_SPEC's `tiny` on the store, whose rank-1 worker is SIGKILLed once the
    rung has a checkpoint."""
    root = tmp_path_factory.mktemp("killed-on-s3")
    killed, said = {}, []
    code, run_dir = train(
        root, on_s3("killed", MUP_SPEC), on_start=kill_rank1("tiny", killed, said), only=["tiny"]
    )
    local = sorted(p.name for p in (root / "runs").iterdir())  # before any test opens the MLflow store
    return {"root": root, "code": code, "run_dir": run_dir, "kill": killed, "said": said, "local": local}


def test_on_s3_a_killed_worker_resumes_bitwise_and_nothing_is_written_locally(reference, killed_on_s3):
    """Run directories on a store (no shared disk): every rank uploads its own shards, a SIGKILLed
    worker's group resumes from the newest checkpoint whose manifest the store holds, and the loss
    curve is bitwise the one of an uninterrupted run (the local reference). The rung is μP: its
    per-matrix LRs are optimiser param groups over ZeRO-3 partitioned parameters, and they resume too.
    The restart is visible: a progress line, the rung's MLflow run, `sweep status`."""
    ref_root, ref_dir = reference
    tmp_path, code, run_dir, killed, said = (
        killed_on_s3[k] for k in ("root", "code", "run_dir", "kill", "said")
    )
    assert code == 0 and str(run_dir).startswith(f"s3://{BUCKET}/killed/pt/")
    spec = load_spec(tmp_path / "spec.yaml")
    tiny = spec.rung("tiny")
    assert tiny.model.mup is not None and tiny.model.mup.encoder.width == 16
    # The reference's config (its hash names both directories): compared bitwise.
    assert run_dir.name == ref_dir.name == tiny.key
    assert load_spec(ref_root / "spec.yaml").rung("tiny").hash == tiny.hash
    assert killed and killed["after"] < 12, killed
    rank1 = json.loads((run_dir / "workers" / "rank1.json").read_text())
    assert rank1["pid"] != killed["pid"] and rank1["start_step"] >= 4  # a new worker resumed from a ckpt
    assert losses(run_dir) == losses(ref_dir) and len(losses(ref_dir)) == 12  # bitwise: at every step
    assert val_losses(run_dir) == val_losses(ref_dir) and len(val_losses(ref_dir)) == 3  # and held-out loss
    assert [f.step for f in ckpt.list_steps(run_dir)] == [4, 8, 12]
    assert all(ckpt.verify(f.path) is None for f in ckpt.list_steps(run_dir))
    manifest = ckpt.read_manifest(RungPaths(run_dir).checkpoint(12))
    shards = {ckpt.rank_of(rel) for rel in manifest["files"]} - {None}
    assert shards == {0, 1}  # both ranks' shards, each uploaded by its own rank
    # How long a checkpoint step waited for the previous upload: logged at the later checkpoints.
    waits = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in waits if CKPT_WAIT_METRIC in r} >= {12}
    # Nothing of the run on local disk but the tracking DB (caches live under SWEEP4D_CACHE).
    assert killed_on_s3["local"] == ["mlflow.db"]
    # The export evals read, streamed from the store into the cache: it rebuilds the μP encoder.
    encoder, rung = load_encoder(local_copy(RungPaths(run_dir).export(12)))
    assert rung["name"] == "tiny" and encoder.cfg.mup is not None

    # The restart is visible: a progress line, the rung's MLflow run, `sweep status`.
    restarts = [line for line in said if "worker died" in line]
    pattern = (
        rf"\[{re.escape(run_dir.name)}\] worker died at step (\d+); "
        r"restarted from checkpoint (\d+) \(attempt 1 of 2\)"
    )
    assert len(restarts) == 1 and re.fullmatch(pattern, restarts[0]), said
    died, resumed = map(int, re.fullmatch(pattern, restarts[0]).groups())
    assert resumed == rank1["start_step"] and resumed <= died < 12
    client, run = rung_run(tmp_path, run_dir)
    history = partial(client.get_metric_history, run.info.run_id)
    assert run.data.tags[RESTARTS_TAG] == "1"
    assert [(m.step, m.value) for m in history(RESTARTS_METRIC)] == [(died, 1.0)]
    [row] = [r for r in status_rows(spec) if r["rung"] == run_dir.name]
    assert row["restarts"] == 1 and row["state"] == "done"
    # One value per step, though the steps after the checkpoint were trained twice.
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    for key in ("train/loss", "train/lr", "train/clips_per_s"):
        assert sorted(m.step for m in history(key)) == list(range(1, 13)), key
    assert sorted((m.step, m.value) for m in history(VAL_LOSS_METRIC)) == sorted(val_losses(ref_dir).items())


# Two rungs that fail, on a store, with no restarts: `tiny`, whose uploads at step 8 are refused
# every time, and `boom`, whose learning rate diverges.
FAILING_SPEC = SPEC.replace("cpu_workers: 2\n", "cpu_workers: 2\n  max_failures: 0\n").replace(
    "\nevals:", "\n  - {name: boom, width: 32, depth: 2, mlp: 64, heads: 2, lr: 1.0e+30}\nevals:"
)


@pytest.fixture(scope="module")
def failing(ray_cluster, s3, tmp_path_factory):
    """One sweep training both of FAILING_SPEC's rungs concurrently. -> its exit code, run dirs by name."""
    s3.clear()
    s3.fail("/refused/pt/tiny-", "step_00000008/deepspeed/zero_pp_rank_0", times=10**6)
    try:
        return sweep(tmp_path_factory.mktemp("failing"), on_s3("refused", FAILING_SPEC))
    finally:
        s3.clear()


def test_on_s3_an_upload_that_keeps_failing_fails_the_rung_naming_bucket_and_key(failing):
    code, dirs = failing
    run_dir = dirs["tiny"]
    assert code == 1
    reason = json.loads((run_dir / "status.json").read_text())["reason"]
    assert f"bucket '{BUCKET}'" in reason and "key 'refused/pt/" in reason, reason
    assert "step_00000008/deepspeed/zero_pp_rank_0" in reason, reason
    assert not RungPaths(run_dir).restarts.exists()  # max_failures: 0 failed it at once
    found, _ = ckpt.latest_valid(run_dir)  # the previous checkpoint is whole
    assert found.step == 4 and ckpt.verify(found.path) is None


def test_truncated_latest_checkpoint_falls_back_to_previous_with_warning(reference, tmp_path):
    _, ref_dir = reference
    root = tmp_path
    run_dir = root / "runs" / "pt" / ref_dir.name
    shutil.copytree(ref_dir, run_dir)
    shutil.rmtree(RungPaths(run_dir).checkpoint(12))
    victim = next(p for p in (RungPaths(run_dir).checkpoint(8) / "deepspeed").rglob("*") if p.is_file())
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (run_dir / "metrics.jsonl").unlink()
    assert fit(root) == run_dir  # resuming is the fit's: no sweep around it
    resume = json.loads((run_dir / "resume.json").read_text())
    assert resume["step"] == 4
    assert any("step_00000008" in w and "corrupt" in w for w in resume["warnings"])
    assert losses(run_dir) == {s: v for s, v in losses(ref_dir).items() if s > 4}


def test_diverging_learning_rate_ends_failed_with_nan_reason(failing):
    code, dirs = failing
    run_dir = dirs["boom"]
    assert code == 1
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed"
    assert "nan" in status["reason"].lower() or "inf" in status["reason"].lower()
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["step"] < 12  # it stopped instead of training on


def test_sweep_eval_runs_on_a_pretraining_export(reference, tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    _, run_dir = reference
    spec = tmp_path / "eval.yaml"
    spec.write_text(
        textwrap.dedent(MUP_SPEC).replace(
            "evals: {tasks: []}",
            "evals: {tasks: [depth], readout: {width: 16, heads: 2, epochs: 2, batch_size: 8, "
            "train_clips: 16, val_clips: 8, test_clips: 8}}",
        )
    )
    result = CliRunner().invoke(
        app, ["eval", str(RungPaths(run_dir).checkpoint(12)), "--task", "depth", "--spec", str(spec)]
    )
    assert result.exit_code == 0, result.output
    assert "abs_rel" in result.output and "trivial baseline" in result.output
    missing = CliRunner().invoke(app, ["eval", str(tmp_path / "nope"), "--task", "depth"])
    assert missing.exit_code == 2 and "no encoder export" in missing.output
