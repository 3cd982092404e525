"""Pretraining batches as a pure function of (seed, step, rank).

Every rank of every step reads a fixed slice of one global, virtual sequence of
clips: global position g = step * global_batch + rank * per_rank_batch + j. A
resumed run therefore sees exactly the batches an uninterrupted one would have.
For real data, position g maps to a clip through a per-epoch permutation seeded
by (seed, epoch), and the clip's start frame is drawn from (seed, g).

So batches can be made anywhere: `iter_from` decodes them ahead in a thread, or in
`data.workers` DataLoader processes, and yields the same bytes in the same order either way.

Synthetic clips are kept on this machine's disk as they are rendered (`RenderedClips`): every rung
of a sweep with the same world and seed reads the same clips from position 0, so only the longest
rung renders; the others, and later sweeps, read them back (bytes equal to a fresh render).

`held_out_clips` is the fixed held-out set the trainer measures val/loss on: the same
world as pretraining, its `val` split, which pretraining never reads.
"""

import hashlib
import json
import os
import queue
import threading
from itertools import count
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import data4d.world
from contracts.errors import UserError
from contracts.storage import cache_dir
from data4d.readers import VideoFolder, WebDataset
from data4d.world import SyntheticWorld

RENDERED_BYTES = 1 << 30  # at most this much of one world's pretraining clips is kept on disk


def renderer_version() -> str:
    """What decides a rendered clip besides its world's arguments: the source of every module of
    the world package (data4d/world/), and numpy's version."""
    digest = hashlib.sha256()
    for path in sorted(Path(data4d.world.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{digest.hexdigest()[:16]}/numpy-{np.__version__}"


class RenderedClips:
    """One synthetic world's clips as .npy files under the cache dir, one per position: a clip is
    rendered once per machine (6-7 ms of CPU for an 8x32x32 clip: a third of a local-ladder step) and
    read back after (well under a millisecond). Positions past `RENDERED_BYTES` are rendered every time;
    an unreadable file is rendered again and replaced."""

    def __init__(self, world: SyntheticWorld, args: dict):
        key = json.dumps(args, sort_keys=True) + renderer_version()
        self.world = world
        self.dir = cache_dir() / "pretrain-clips" / hashlib.sha256(key.encode()).hexdigest()[:32]
        self.kept = RENDERED_BYTES // (args["frames"] * args["size"] ** 2 * 3)

    def video(self, g: int) -> np.ndarray:
        if g >= self.kept:
            return self.world[g]["video"]
        path = self.dir / f"{g}.npy"
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # not rendered yet, or a torn file
            pass
        video = self.world[g]["video"]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{g}.tmp-{os.getpid()}-{threading.get_ident()}.npy")
            np.save(tmp, np.ascontiguousarray(video), allow_pickle=False)
            tmp.replace(path)  # atomic: a reader sees the whole file or none
        except OSError:  # no room: the clip is still good
            pass
        return video


def world_args(data, seed, split) -> dict:
    """SyntheticWorld's arguments for the spec's world (`data`: contracts.spec.Data), one split."""
    w = data.world
    return dict(
        frames=data.frames,
        size=data.resolution,
        seed=seed,
        split=split,
        objects=w.objects,
        points=w.points,
        focal=w.focal,
    )


def synthetic_world(data, seed, split):
    """The spec's synthetic world at its clip size, one split."""
    return SyntheticWorld(**world_args(data, seed, split))


def held_out_clips(data, indices, seed=0):
    """Videos (len(indices), T, S, S, 3) uint8: clips `indices` of the world's val split (seed 0, as
    the evals' splits), the same bytes for every rung and every pretraining seed."""
    world = synthetic_world(data, seed, "val")
    return torch.from_numpy(np.stack([world[int(i)]["video"] for i in indices]))


class PretrainStream:
    def __init__(self, data, seed, per_rank_batch, rank=0, world_size=1):
        self.data, self.seed = data, seed
        self.per_rank_batch, self.rank, self.world_size = per_rank_batch, rank, world_size
        self.global_batch = per_rank_batch * world_size
        self._perm = (None, None)  # (epoch, permutation) of real-data clips
        if data.source == "synthetic":
            self.source = synthetic_world(data, seed, "pretrain")
            self.rendered = RenderedClips(self.source, world_args(data, seed, "pretrain"))
        else:
            kind = {"video_folder": VideoFolder, "webdataset": WebDataset}[data.source]
            if not data.path:
                raise ValueError(f"data.path is required for data.source={data.source!r}")
            self.source = kind(data.path, frames=data.frames, resolution=data.resolution, stride=data.stride)

    def positions(self, step):
        """Global clip positions this rank reads at `step`: (per_rank_batch,) int64."""
        start = step * self.global_batch + self.rank * self.per_rank_batch
        return np.arange(start, start + self.per_rank_batch, dtype=np.int64)

    def clip(self, g):
        """Video (T, S, S, 3) uint8 at global position g."""
        if isinstance(self.source, SyntheticWorld):
            return self.rendered.video(int(g))
        n = len(self.source)
        epoch, k = divmod(int(g), n)
        if self._perm[0] != epoch:  # one shuffle per epoch, seeded by (seed, epoch)
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        i = self._perm[1][k]
        return self.source.read(i, rng=np.random.default_rng([self.seed, int(g), 1]))["video"]

    def batch(self, step):
        """(per_rank_batch, T, S, S, 3) uint8 tensor for this rank at `step`."""
        return torch.from_numpy(np.stack([self.clip(g) for g in self.positions(step)]))

    def iter_from(self, step, workers=0, prefetch=2):
        """Yields (step, batch) from `step` on, decoded ahead: by one background thread (workers=0)
        or by `workers` processes of a torch DataLoader, each decoding whole batches.

        Every batch is `self.batch(step)`, yielded in step order either way, so the worker count
        and prefetching change timing, never data. Stop by breaking out of the loop.
        """
        ahead = self._processes(step, workers, prefetch) if workers else self._thread(step, prefetch)
        for s, b in zip(count(step), ahead):
            if isinstance(b, Exception):
                raise b
            yield s, b

    def _processes(self, step, workers, prefetch):
        """Batches from `step` on (or the UserError that stopped them), made in worker processes."""
        loader = DataLoader(
            _Batches(self),
            batch_size=None,  # an item is already a whole batch
            sampler=count(step),  # the step indices, in order: the loader yields in sampler order
            num_workers=workers,
            prefetch_factor=prefetch,
            # The platform's start method: fork on Linux. A forked worker starts in milliseconds,
            # shares the source's file index, and needs no `if __name__ == "__main__"` guard in
            # the script; it only decodes (PyAV, NumPy), never touching the CUDA, NCCL or Ray
            # state it inherits, which is what fork would break.
        )
        return iter(loader)

    def _thread(self, step, prefetch):
        """Batches from `step` on (or the exception that stopped them), made by one daemon thread."""
        q = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def produce():
            s = step
            while not stop.is_set():
                try:
                    item = self.batch(s)
                except Exception as e:  # hand the error to the consumer instead of dying silently
                    item = e
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if isinstance(item, Exception):
                    return
                s += 1

        threading.Thread(target=produce, daemon=True).start()
        try:
            while True:
                yield q.get()
        finally:
            stop.set()


class _Batches(Dataset):
    """A stream as a map step -> batch, for DataLoader workers (each holds its own copy).

    A UserError (a corrupt file, named) is returned rather than raised: raised in a worker, the
    DataLoader would re-raise it wrapped in its own traceback, and the user's one line is lost.
    """

    def __init__(self, stream):
        self.stream = stream

    def __getitem__(self, step):
        try:
            return self.stream.batch(step)
        except UserError as e:
            return e
