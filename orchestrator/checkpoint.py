"""Checkpoints: a directory of files sealed by a manifest (step, rung key, every file with its
size and sha256) written last. What a checkpoint dir holds: contracts.layout. A dir without a
valid manifest is not a checkpoint.

On disk, the files are written into a staging dir, the manifest is fsynced, and the dir is
renamed into place (`seal`). On a store there is no rename and no shared disk: every rank
uploads its own files into the checkpoint dir with a list of them (`upload_part`, parts/rank<N>.json),
rank 0 waits for every rank's list (`wait_for_parts`) and writes the manifest last (`seal_remote`);
on resume each rank downloads only its own shards, checking their checksums (`fetch_shards`).

A checkpoint whose manifest is missing, or whose files do not match it (truncated, half-copied,
a shard missing from the bucket), is skipped in favour of the previous one, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from contracts.layout import MANIFEST, PARTS, RungPaths, step_of
from contracts.spec import RungConfig
from contracts.storage import StorageError, download, files_under, is_remote, retrying, root_of, upload, where

PARTS_TIMEOUT_S = 3600.0  # how long rank 0 waits for the other ranks' uploads of one checkpoint
_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_")  # DeepSpeed's per-rank shard files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(staging: Path, final: Path, step: int, rung_key: str, extra: dict | None = None) -> Path:
    """Write the manifest, flush everything to disk, and rename staging -> final atomically."""
    files = {
        str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(staging)
    }
    manifest = {"step": step, "rung_key": rung_key, "files": files, **(extra or {})}
    tmp = staging / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    for p in [*_files(staging), tmp]:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, staging / MANIFEST)
    if final.exists():  # left over from a crash between rename and registration: replace it
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def verify(ckpt: Path, checksums: bool = True) -> str | None:
    """None if the checkpoint matches its manifest, else the reason it does not. On a store, sizes
    from one listing (the ranks that download the files check their checksums: `fetch_shards`)."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (half-written)"
    except (json.JSONDecodeError, OSError) as e:
        return f"unreadable manifest ({e})"
    if is_remote(ckpt):
        held = files_under(ckpt)
        for rel, meta in manifest.get("files", {}).items():
            if rel not in held:
                return f"missing file {rel} ({where(ckpt / rel)})"
            if held[rel] != meta["bytes"]:
                return f"{rel} has {held[rel]} bytes, manifest says {meta['bytes']}"
        return None
    for rel, meta in manifest.get("files", {}).items():
        p = ckpt / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != meta["bytes"]:
            return f"{rel} has {p.stat().st_size} bytes, manifest says {meta['bytes']}"
        if checksums and _sha256(p) != meta["sha256"]:
            return f"{rel} checksum mismatch"
    return None


def read_manifest(ckpt: Path) -> dict:
    return json.loads((ckpt / MANIFEST).read_text())


@dataclass(frozen=True)
class Found:
    step: int
    path: Path


def step_dirs(run_dir: Path) -> list[Found]:
    """Every checkpoint dir, sealed or not, oldest first."""
    root = RungPaths(root_of(run_dir)).checkpoints
    if not root.is_dir():
        return []
    return sorted((Found(step_of(p.name), p) for p in root.glob("step_*")), key=lambda f: f.step)


def list_steps(run_dir: Path) -> list[Found]:
    """Sealed checkpoint dirs (manifest present), oldest first; not yet verified."""
    return [f for f in step_dirs(run_dir) if (f.path / MANIFEST).exists()]


def latest_valid(run_dir: Path, start_from: Path | None = None) -> tuple[Found | None, list[str]]:
    """Newest checkpoint that matches its manifest (at or before `start_from` if given), plus warnings
    for skipped ones (a dir without a manifest among them)."""
    warnings: list[str] = []
    candidates = step_dirs(run_dir)
    if start_from is not None:
        limit = step_of(Path(start_from).name)
        candidates = [c for c in candidates if c.step <= limit]
    for c in reversed(candidates):
        reason = verify(c.path)
        if reason is None:
            return c, warnings
        warnings.append(skipped(c.path, reason))
    return None, warnings


def skipped(ckpt: Path, reason: str) -> str:
    return f"checkpoint {ckpt} is corrupt ({reason}); falling back to the previous one"


def is_trained(rung: RungConfig, runs_root: Path) -> bool:
    """The rung's final checkpoint is sealed and its files are all there (sizes, not checksums)."""
    steps = list_steps(RungPaths.for_rung(rung, runs_root).root)
    return bool(steps) and steps[-1].step >= rung.steps and verify(steps[-1].path, checksums=False) is None


def resumed_with_other_workers(rung: RungConfig, runs_root: Path) -> str | None:
    """Why this untrained rung cannot resume as specified, or None. A checkpoint holds one ZeRO shard
    set per rank, and batches and masks are functions of (seed, step, rank): a rung resumes only with
    the worker count it was trained with (the count is not part of its key)."""
    root = RungPaths.for_rung(rung, runs_root).root
    steps = list_steps(root)
    if not steps or steps[-1].step >= rung.steps:  # nothing to resume: its evals read the export
        return None
    try:
        world = read_manifest(steps[-1].path).get("world_size")
    except (OSError, ValueError):
        return None  # a corrupt manifest: the workers skip that checkpoint with a warning
    if world is None or world == rung.workers:
        return None
    workers = f"{world} worker" + ("s" if world > 1 else "")
    return (
        f"rung {rung.key} was trained to step {steps[-1].step} by {workers} ({where(steps[-1].path)}); "
        f"this spec gives it {rung.workers}: set its cpu_workers/gpus back to {world} to resume, "
        f"or move {where(root)} aside to train it again"
    )


# ------------------------------------------------------------------ on a store


def file_table(local: Path) -> dict[str, dict]:
    """Every file under a local dir: relative path -> {bytes, sha256}."""
    return {
        str(p.relative_to(local)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(local)
    }


def upload_tree(local: Path, remote: Path) -> dict[str, dict]:
    """Every file under `local` to the same relative path under `remote` -> their table."""
    table = file_table(local)
    for rel in table:
        upload(local / rel, remote / rel)
    return table


def upload_part(local: Path, ckpt: Path, rank: int) -> dict[str, dict]:
    """A rank's files of a checkpoint to the store, then the list of them (parts/rank<N>.json)."""
    table = upload_tree(local, ckpt)
    part = ckpt / PARTS / f"rank{rank}.json"
    retrying(f"upload of {where(part)}", lambda: part.write_text(json.dumps(table, sort_keys=True)))
    return table


def wait_for_parts(ckpt: Path, world: int, timeout_s: float = PARTS_TIMEOUT_S) -> dict[str, dict]:
    """Rank 0: every rank's file list of a checkpoint, merged, once all `world` are in the store."""
    deadline = time.monotonic() + timeout_s
    while True:
        parts = [ckpt / PARTS / f"rank{r}.json" for r in range(world)]
        if all(p.exists() for p in parts):
            return {rel: meta for p in parts for rel, meta in json.loads(p.read_text()).items()}
        if time.monotonic() > deadline:
            missing = [p.name for p in parts if not p.exists()]
            raise StorageError(
                f"checkpoint {where(ckpt)}: no upload from {', '.join(missing)} in {timeout_s:g}s"
            )
        time.sleep(0.2)


def seal_remote(
    ckpt: Path, files: dict[str, dict], step: int, rung_key: str, extra: dict | None = None
) -> None:
    """The manifest, last: from now on the checkpoint exists."""
    manifest = {"step": step, "rung_key": rung_key, "files": files, **(extra or {})}
    path = ckpt / MANIFEST
    retrying(
        f"upload of {where(path)}", lambda: path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    )


def rank_of(rel: str) -> int | None:
    """The rank a shard file belongs to, None for a file every rank may read."""
    m = _RANK_FILE.search(rel)
    return int(m.group(1)) if m else None


def fetch_files(ckpt: Path, files: dict[str, dict], local: Path) -> str | None:
    """Download these files of a checkpoint into `local`, each checked against its size and
    sha256. -> None, or why the checkpoint cannot be used."""
    for rel, meta in files.items():
        dest = local / rel
        try:
            download(ckpt / rel, dest)
        except StorageError as e:
            return str(e)
        if dest.stat().st_size != meta["bytes"] or _sha256(dest) != meta["sha256"]:
            return f"{rel} does not match its manifest (size or checksum)"
    return None


def fetch_shards(ckpt: Path, manifest: dict, rank: int, local: Path) -> str | None:
    """What one rank loads to resume: its own ZeRO shards and the shared files, never another
    rank's shards nor the export."""
    mine = {
        rel: meta
        for rel, meta in manifest["files"].items()
        if not rel.startswith(("export/", PARTS + "/")) and rank_of(rel) in (None, rank)
    }
    return fetch_files(ckpt, mine, local)


def clear_remote(ckpt: Path) -> None:
    """Remove what an earlier attempt left of a checkpoint dir on the store (before writing it again)."""
    if is_remote(ckpt) and ckpt.exists():
        retrying(f"removal of {where(ckpt)}", lambda: ckpt.fs.rm(ckpt.path, recursive=True))
