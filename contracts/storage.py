"""Where a sweep's run directories live: a local directory (the default, `runs/`) or an object
store named by URI (`storage: s3://bucket/prefix` in the spec, `gs://bucket/prefix`, or any
filesystem fsspec knows).

A store root is a `upath.UPath`: it has the pathlib API that the readers and writers of
contracts.layout use (`/`, read_text, write_text, open, glob, exists, unlink, stat), so every
path is still derived in one place and read the same way wherever it lives. A local root stays
a plain `pathlib.Path`, and everything behaves as it always has.

What a store changes, and where that is handled:
- no rename: a single PUT is already atomic, so records are written in place (`layout.write_text`);
- no shared disk: a file a process must open with a local path (ZeRO shards, an export for evals,
  a report being drawn) goes through `cache_dir()` on the machine that needs it; ranks upload
  and download only their own shards (orchestrator.checkpoint);
- an unreachable store is a UserError before anything starts (`check_reachable`).

Credentials are the clouds' own SDK defaults, read on every machine that touches the store (the
driver, each Ray node): for S3, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN),
AWS_ENDPOINT_URL for an S3-compatible server, AWS_DEFAULT_REGION, or an instance role; for GCS,
GOOGLE_APPLICATION_CREDENTIALS or the VM's service account.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from contracts.errors import UserError

T = TypeVar("T")
LOCAL_SCHEMES = ("", "file", "local")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
ATTEMPTS = 4  # tries of one store operation before it is reported as failed
BACKOFF_S = 0.5  # the first wait between tries; doubled each time


class StorageError(UserError):
    """A store that cannot be used: a malformed URI, an unreachable bucket, an upload that kept failing."""


def root_of(location: str | os.PathLike) -> Path:
    """The runs root named by `location`: a local path, or a store URI as a UPath (a Path lookalike).
    Raises StorageError for a malformed URI."""
    if hasattr(location, "protocol"):  # already a UPath
        return location  # type: ignore[return-value]
    text = os.fspath(location)
    m = _URI.match(text)
    if m is None:
        return Path(text)
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme in LOCAL_SCHEMES:
        return Path("/" + rest.lstrip("/"))
    if not rest.split("/", 1)[0]:
        raise StorageError(f"storage {text!r} names no bucket: write it as {scheme}://BUCKET/PREFIX")
    from upath import UPath

    try:
        # No listings cache: the driver polls for checkpoints other machines write.
        return UPath(text, use_listings_cache=False)
    except (ValueError, ImportError) as e:
        raise StorageError(
            f"storage {text!r}: no filesystem for '{scheme}://' ({e}); "
            "use s3://, gs:// or a local path (gs:// needs `pip install gcsfs`)"
        ) from None


def runs_root(given: str | os.PathLike | None, configured: str | None = None) -> Path:
    """Where a command's run directories are: --runs-dir if given, else the spec's `storage:`, else
    `runs/` in the working directory. Absolute, so every process agrees on it."""
    root = root_of(given if given is not None else configured or "runs")
    return root if is_remote(root) else root.resolve()


def uri_of(path) -> str:
    """The URI a tool outside Python's paths takes (MLflow's artifact root): file:// on disk."""
    return str(path) if is_remote(path) else Path(path).resolve().as_uri()


def is_remote(path) -> bool:
    return getattr(path, "protocol", "") not in LOCAL_SCHEMES


def bucket_key(path) -> tuple[str, str]:
    """('bucket', 'prefix/…/file') of a store path, for messages that must name both."""
    bucket, _, key = str(path.path).strip("/").partition("/")
    return bucket, key


def where(path) -> str:
    """How a message names a place: bucket and key on a store, the path on disk."""
    if not is_remote(path):
        return str(path)
    bucket, key = bucket_key(path)
    return f"bucket '{bucket}', key '{key}' ({path})"


def check_reachable(root, write: bool) -> None:
    """Fail fast, before anything launches, when the store cannot be listed (or written)."""
    if not is_remote(root):
        return
    bucket, _ = bucket_key(root)
    try:
        if not root.fs.exists(bucket):
            raise FileNotFoundError(f"no bucket named '{bucket}'")
        if write:
            probe = root / ".sweep4d-probe"
            probe.write_text("ok")
            probe.unlink()
    except Exception as e:
        raise StorageError(
            f"storage {root} is not reachable ({type(e).__name__}: {e}); check the bucket name and the "
            "credentials this machine reads (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, "
            "GOOGLE_APPLICATION_CREDENTIALS)"
        ) from None


def retrying(what: str, fn: Callable[[], T], attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S) -> T:
    """fn(), tried `attempts` times with exponential backoff; then a StorageError naming `what`.
    A missing file is an answer, not a fault: FileNotFoundError passes through untried."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except Exception as e:
            if attempt == attempts:
                raise StorageError(
                    f"{what} failed {attempts} times; last error: {type(e).__name__}: {e}"
                ) from e
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ the local cache


def cache_dir() -> Path:
    """This machine's cache of store files (SWEEP4D_CACHE, else ~/.cache/sweep4d): never the record."""
    return Path(os.environ.get("SWEEP4D_CACHE") or Path.home() / ".cache" / "sweep4d")


def cache_path(path) -> Path:
    """Where this machine caches a store path: its URI spelled out under cache_dir()."""
    return cache_dir() / path.protocol / str(path.path).strip("/")


def upload(local: Path, remote) -> None:
    """One file to the store, retried; a persistent failure names the bucket and key."""
    retrying(f"upload of {local} to {where(remote)}", lambda: remote.fs.put_file(str(local), remote.path))


def download(remote, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    retrying(f"download of {where(remote)}", lambda: remote.fs.get_file(remote.path, str(local)))


def files_under(root) -> dict[str, int]:
    """Every file under a local or store directory: relative path -> bytes (one listing on a store)."""
    if not is_remote(root):
        root = Path(root)
        return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    base = str(root.path).rstrip("/") + "/"
    try:
        found = root.fs.find(root.path, detail=True)
    except FileNotFoundError:
        return {}
    return {k[len(base) :]: int(v.get("size") or 0) for k, v in found.items() if k.startswith(base)}


def local_file(path) -> Path:
    """A local path holding the file `path`: the path itself on disk; for a store, a cached copy."""
    if not is_remote(path):
        return Path(path)
    local = cache_path(path)
    download(path, local)
    return local


def local_copy(path) -> Path:
    """A local directory holding what `path` holds: the path itself on disk; for a store, a copy in
    the cache, fetched once (files already cached with the same size are kept)."""
    if not is_remote(path):
        return Path(path)
    local = cache_path(path)
    for rel, size in files_under(path).items():
        dest = local / rel
        if not (dest.is_file() and dest.stat().st_size == size):
            download(path / rel, dest)
    return local


@contextmanager
def working_copy(path) -> Iterator[Path]:
    """A local directory to read and write `path` through: on a store, fetched before and every
    file uploaded after (a report, the registered forecasts)."""
    if not is_remote(path):
        yield Path(path)
        return
    local = local_copy(path)
    yield local
    for p in sorted(local.rglob("*")):
        if p.is_file():
            upload(p, path / str(p.relative_to(local)))


def remove_cached(path) -> None:
    if is_remote(path):
        shutil.rmtree(cache_path(path), ignore_errors=True)
