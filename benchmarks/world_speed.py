"""Rendering speed of the synthetic world on one core: python benchmarks/world_speed.py

Prints wall-clock clips/s and, beside it, clips per CPU-second of this process: on a
shared machine the second figure is what one free core would give.
"""

import time

import torch

from data4d import SyntheticWorld

torch.set_num_threads(1)  # one core, as a data worker beside training would have

for frames, size, n in ((16, 64, 200), (8, 32, 500)):
    world = SyntheticWorld(frames=frames, size=size, seed=0)
    world[0]  # warm up
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(1, n + 1):
        world[i]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"{frames}x{size}x{size}: {n / wall:.1f} clips/s wall, {n / cpu:.1f} clips/s per CPU-second ({1e3 * wall / n:.1f} ms/clip, {n} clips)"
    )
