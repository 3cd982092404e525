"""Run directories on object storage, against a local S3 server (moto, started by the tests on
127.0.0.1 behind a fault-injecting proxy: conftest.s3): URIs, records, checkpoints that are skipped
when their manifest or a shard is missing, uploads that are retried or fail naming bucket and key."""

import json
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import BUCKET
from typer.testing import CliRunner

from contracts.layout import RungPaths, most_recent_sweep, read_json, read_jsonl, write_json
from contracts.spec import SpecError, load_spec
from contracts.storage import StorageError, check_reachable, is_remote, local_copy, root_of, upload
from orchestrator import checkpoint as ckpt
from orchestrator.cli import app
from orchestrator.training.sinks import append_jsonl, keep_steps_upto

runner = CliRunner()
SPEC = """\
name: st
storage: {storage}
data: {{frames: 4, resolution: 16, tubelet: [2, 8, 8], world: {{objects: 2, points: 8}}}}
pretraining: {{batch_size: 8, steps: 8, checkpoint_interval: 4, cpu_workers: 2}}
ladder:
  - {{name: tiny, width: 16, depth: 1, mlp: 32, heads: 2}}
evals: {{tasks: []}}
"""


def spec_file(tmp_path: Path, storage: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(SPEC.format(storage=storage)))
    return p


@pytest.mark.parametrize("uri", ["s3:///no-bucket", "nosuchfs://bucket/prefix"])
def test_malformed_storage_uri_is_one_user_error(tmp_path, uri):
    spec = spec_file(tmp_path, uri)
    with pytest.raises(SpecError, match="storage"):
        load_spec(spec)
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2 and "storage" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_local_path_stays_a_plain_directory(tmp_path):
    assert not is_remote(root_of(tmp_path / "runs")) and isinstance(root_of("runs"), Path)
    assert root_of("file:///tmp/x") == Path("/tmp/x")
    assert "storage" not in load_spec(spec_file(tmp_path, "null")).model_dump(exclude_none=True)


def test_unreachable_bucket_exits_2_before_anything_starts(s3, tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    ray_before = ray.is_initialized()  # the session's cluster may be up already
    spec = spec_file(tmp_path, "s3://no-such-bucket-here/prefix")
    for command in (["run", str(spec)], ["status", str(spec)], ["report", str(spec)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert "not reachable" in result.output and "no-such-bucket-here" in result.output, result.output
    assert not (tmp_path / "runs").exists() and ray.is_initialized() == ray_before


def test_records_live_on_the_store(s3):
    root = root_of(f"s3://{BUCKET}/records")
    check_reachable(root, write=True)
    paths = RungPaths.of(root, "sw", "tiny-abc123")
    write_json(paths.info, {"key": "tiny-abc123"})
    write_json(RungPaths.of(root, "sw", "x").root.parent / "sweep.json", {"tracking_uri": "sqlite:///x"})
    assert read_json(paths.info) == {"key": "tiny-abc123"} and read_json(paths.status) is None
    for step in (1, 2, 3):
        append_jsonl(paths.metrics, {"step": step, "train/loss": 1.0 / step})
    keep_steps_upto(paths.metrics, 2)  # a resume from step 2 drops what follows
    assert [r["step"] for r in read_jsonl(paths.metrics)] == [1, 2]
    assert str(most_recent_sweep(root)) == f"s3://{BUCKET}/records/sw"


# ------------------------------------------------------------------ checkpoints on the store


def put_checkpoint(run_dir, step: int, tmp_path: Path, world: int = 2) -> Path:
    """A checkpoint as the ranks write it: each uploads its own shards and their list; rank 0 adds
    the shared files and writes the manifest last."""
    final = RungPaths(run_dir).checkpoint(step)
    files = {}
    for rank in range(world):
        local = tmp_path / f"step{step}-rank{rank}"
        (local / "deepspeed").mkdir(parents=True)
        (local / "deepspeed" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(
            bytes([rank, step]) * 100
        )
        if rank == 0:
            (local / "deepspeed" / "latest").write_text("deepspeed")
        files |= ckpt.upload_part(local, final, rank)
    assert ckpt.wait_for_parts(final, world, timeout_s=5) == files
    ckpt.seal_remote(final, files, step, "tiny-abc123")
    return final


def test_checkpoint_missing_its_manifest_or_a_shard_is_skipped_with_a_warning(s3, tmp_path):
    run_dir = root_of(f"s3://{BUCKET}/skip/sw/tiny-abc123")
    put_checkpoint(run_dir, 4, tmp_path)
    lacks_shard = put_checkpoint(run_dir, 8, tmp_path)
    (lacks_shard / "deepspeed" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    no_manifest = put_checkpoint(run_dir, 12, tmp_path)
    (no_manifest / "manifest.json").unlink()
    found, warnings = ckpt.latest_valid(run_dir)
    assert found.step == 4, warnings
    assert "step_00000012" in warnings[0] and "no manifest" in warnings[0]
    assert "step_00000008" in warnings[1] and "missing file deepspeed/zero_pp_rank_1" in warnings[1]
    assert f"bucket '{BUCKET}'" in warnings[1]
    # What each rank downloads to resume: its own shard and the shared files, checked.
    manifest = ckpt.read_manifest(found.path)
    assert ckpt.fetch_shards(found.path, manifest, 1, tmp_path / "r1") is None
    got = sorted(str(p.relative_to(tmp_path / "r1")) for p in (tmp_path / "r1").rglob("*") if p.is_file())
    assert got == ["deepspeed/latest", "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    # The scheduler, `sweep status`: only sealed checkpoints count.
    assert [f.step for f in ckpt.list_steps(run_dir)] == [4, 8]


def test_upload_refused_twice_then_accepted_is_retried(s3, tmp_path):
    s3.clear()
    local = tmp_path / "blob.bin"
    local.write_bytes(b"x" * 1000)
    remote = root_of(f"s3://{BUCKET}/retry/blob.bin")
    s3.fail("retry/blob.bin", times=2)
    upload(local, remote)
    assert len(s3.refused) == 2 and remote.read_bytes() == local.read_bytes()


def test_a_record_write_refused_twice_is_retried_and_a_missing_record_is_not(s3, monkeypatch):
    """The driver writes status and eval records on every tick: one refused PUT must not end a sweep."""
    s3.clear()
    record = root_of(f"s3://{BUCKET}/records/sw/a-abc123/status.json")
    s3.fail("records/sw/a-abc123/status.json", times=2)
    write_json(record, {"state": "running"})
    assert len(s3.refused) == 2 and read_json(record) == {"state": "running"}
    slept = []
    monkeypatch.setattr("contracts.storage.time.sleep", slept.append)
    assert read_json(record.parent / "absent.json") is None and slept == []  # an answer, not a fault


def test_a_record_rewritten_while_it_is_read_is_read_whole(s3):
    """Rank 0 rewrites progress.json every step while the driver reads it every tick: a file handle's
    HEAD-then-GET fails when the object changes in between (FileExpired, which ended a sweep)."""
    s3.clear()
    record = root_of(f"s3://{BUCKET}/race/sw/a-abc123/progress.json")
    write_json(record, {"step": 0, "pad": ""})
    stop = threading.Event()

    def rank0() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            write_json(record, {"step": step, "pad": "x" * (step % 50)})

    writer = threading.Thread(target=rank0, daemon=True)
    writer.start()
    try:
        reads = [read_json(record) for _ in range(60)]
    finally:
        stop.set()
        writer.join()
    assert all(r is not None and r["pad"] == "x" * (r["step"] % 50) for r in reads)
    assert len({r["step"] for r in reads}) > 1  # the writer did write meanwhile


def test_upload_refused_for_good_names_bucket_and_key_and_keeps_the_previous_checkpoint(s3, tmp_path):
    s3.clear()
    run_dir = root_of(f"s3://{BUCKET}/refuse/sw/tiny-abc123")
    previous = put_checkpoint(run_dir, 4, tmp_path)
    s3.fail("step_00000008", times=10**6)
    try:
        with pytest.raises(StorageError) as e:
            put_checkpoint(run_dir, 8, tmp_path)
    finally:
        s3.clear()
    msg = str(e.value)
    assert f"bucket '{BUCKET}'" in msg and "key 'refuse/sw/tiny-abc123/checkpoints/step_00000008/" in msg
    assert "failed 4 times; last error: PermissionError: injected fault" in msg
    found, _ = ckpt.latest_valid(run_dir)
    assert found.step == 4 and found.path == previous and ckpt.verify(previous) is None
    local = local_copy(previous)  # evals stream a store dir into the cache
    assert json.loads((local / "manifest.json").read_text())["step"] == 4
