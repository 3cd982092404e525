"""Checkpoints on disk: written into a staging dir, sealed with a manifest
(step, rung key, every file with its size and sha256), then renamed into place.
What a checkpoint dir holds: contracts.layout. A dir without a valid manifest
(written last) is not a checkpoint.

A checkpoint whose files do not match its manifest (truncated, half-copied) is
skipped in favour of the previous one, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from contracts.layout import MANIFEST, RungPaths, step_of
from contracts.spec import RungConfig


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
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
    """None if the checkpoint matches its manifest, else the reason it does not."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (half-written)"
    except (json.JSONDecodeError, OSError) as e:
        return f"unreadable manifest ({e})"
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


def list_steps(run_dir: Path) -> list[Found]:
    """Sealed checkpoint dirs (manifest present), oldest first; not yet verified."""
    root = RungPaths(Path(run_dir)).checkpoints
    if not root.is_dir():
        return []
    found = [Found(step_of(p.name), p) for p in root.glob("step_*") if (p / MANIFEST).exists()]
    return sorted(found, key=lambda f: f.step)


def latest_valid(run_dir: Path, start_from: Path | None = None) -> tuple[Found | None, list[str]]:
    """Newest checkpoint that matches its manifest (at or before `start_from` if given), plus warnings for skipped ones."""
    warnings: list[str] = []
    candidates = list_steps(run_dir)
    if start_from is not None:
        limit = step_of(Path(start_from).name)
        candidates = [c for c in candidates if c.step <= limit]
    for c in reversed(candidates):
        reason = verify(c.path)
        if reason is None:
            return c, warnings
        warnings.append(f"checkpoint {c.path} is corrupt ({reason}); falling back to the previous one")
    return None, warnings


def is_trained(rung: RungConfig, runs_root: Path) -> bool:
    """The rung's final checkpoint is sealed and its files are all there (sizes, not checksums)."""
    steps = list_steps(RungPaths.for_rung(rung, runs_root).root)
    return bool(steps) and steps[-1].step >= rung.steps and verify(steps[-1].path, checksums=False) is None
