"""Pretraining batches as a pure function of (seed, step, rank).

Every rank of every step reads a fixed slice of one global, virtual sequence of
clips: global position g = step * global_batch + rank * per_rank_batch + j. A
resumed run therefore sees exactly the batches an uninterrupted one would have.
For real data, position g maps to a clip through a per-epoch permutation seeded
by (seed, epoch), and the clip's start frame is drawn from (seed, g).
"""

import queue
import threading

import numpy as np
import torch

from data4d.readers import VideoFolder, WebDataset
from data4d.world import SyntheticWorld


class PretrainStream:
    def __init__(self, data, seed, per_rank_batch, rank=0, world_size=1):
        self.data, self.seed = data, seed
        self.per_rank_batch, self.rank, self.world_size = per_rank_batch, rank, world_size
        self.global_batch = per_rank_batch * world_size
        self._perm = (None, None)  # (epoch, permutation) of real-data clips
        if data.source == "synthetic":
            w = data.world
            self.source = SyntheticWorld(
                frames=data.frames, size=data.resolution, seed=seed, split="pretrain",
                objects=w.objects, points=w.points, focal=w.focal,
            )  # fmt: skip
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
            return self.source[int(g)]["video"]
        n = len(self.source)
        epoch, k = divmod(int(g), n)
        if self._perm[0] != epoch:  # one shuffle per epoch, seeded by (seed, epoch)
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        i = self._perm[1][k]
        return self.source.read(i, rng=np.random.default_rng([self.seed, int(g), 1]))["video"]

    def batch(self, step):
        """(per_rank_batch, T, S, S, 3) uint8 tensor for this rank at `step`."""
        return torch.from_numpy(np.stack([self.clip(g) for g in self.positions(step)]))

    def iter_from(self, step, prefetch=2):
        """Yields (step, batch) from `step` on, rendered ahead in a background thread.

        Order is fixed (one producer, a FIFO queue), so prefetching changes timing, never data.
        Stop by breaking out of the loop; the thread is a daemon and exits with the process.
        """
        q = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def produce():
            s = step
            while not stop.is_set():
                try:
                    item = (s, self.batch(s))
                except Exception as e:  # hand the error to the consumer instead of dying silently
                    item = (s, e)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if isinstance(item[1], Exception):
                    return
                s += 1

        threading.Thread(target=produce, daemon=True).start()
        try:
            while True:
                s, b = q.get()
                if isinstance(b, Exception):
                    raise b
                yield s, b
        finally:
            stop.set()
