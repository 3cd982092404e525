"""Decoding speed of real video for pretraining, and the CPU cores a GPU would need to keep up.

    python benchmarks/decode_speed.py                 # 1, 2, ... cpu_count decode workers
    python benchmarks/decode_speed.py --workers 1,2,4 --height 256 --width 340 --seconds 10

Writes H.264 videos (a textured scene panning, `--seconds` long at 30 fps) into a temporary
folder, then reads them as a `video_folder` source at the 4DS clip (16 x 224 x 224, stride 1):

- in-process, one batch at a time: clips per CPU-second (process time, so ffmpeg's own threads
  count; what one free core gives, even on a shared machine);
- through `PretrainStream.iter_from(workers=w)`, the trainer's path: clips/s wall, and per worker.

Then the clips/s per GPU that `sweep plan` assumes for the 4DS rungs B and L
(sweeps/size_ladder.yaml at its MFU and peak: clips per step x steps / GPU-seconds), divided by
clips per CPU-second: the cores per GPU that decoding needs.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from contracts.spec import Data, load_spec
from data4d import PretrainStream
from orchestrator.plan import plan_sweep

LADDER = Path(__file__).resolve().parents[1] / "sweeps" / "size_ladder.yaml"


def write_videos(folder, n, height, width, seconds, fps=30):
    """n H.264 videos of a smooth random texture panning across the frame, with a little noise:
    real-looking enough that the codec does real work (flat frames would decode for free)."""
    rng = np.random.default_rng(0)
    for k in range(n):
        coarse = rng.uniform(0, 255, (height // 16 + 2, 2 * width // 16 + 2, 3))
        texture = np.kron(coarse, np.ones((16, 16, 1)))  # blocky, then blurred by the codec's own loss
        with av.open(str(folder / f"v{k:03d}.mp4"), "w") as out:
            s = out.add_stream("libx264", rate=fps)
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            for t in range(int(seconds * fps)):
                x = (3 * t) % width
                img = texture[:height, x : x + width] + rng.normal(0, 4, (height, width, 3))
                frame = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
                for p in s.encode(frame):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)


def one_core(stream, steps):
    """Clips per CPU-second and per wall second, decoding batches in this process."""
    stream.batch(0)  # warm up: imports, the first file's open
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(1, steps + 1):
        stream.batch(s)
    clips = steps * stream.per_rank_batch
    return clips / (time.process_time() - c0), clips / (time.perf_counter() - t0)


def with_workers(stream, workers, steps):
    """Clips/s wall through the trainer's path, after the first `workers` batches (worker start)."""
    it = stream.iter_from(0, workers=workers)
    for _ in range(workers):
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    wall = time.perf_counter() - t0
    it.close()
    return steps * stream.per_rank_batch / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default=",".join(str(w) for w in range(1, (os.cpu_count() or 1) + 1)))
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="clips per batch (per rank and step)")
    ap.add_argument("--steps", type=int, default=6, help="batches timed per measurement")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        write_videos(Path(tmp), args.videos, args.height, args.width, args.seconds)
        data = Data(source="video_folder", path=tmp, frames=16, resolution=224, stride=1)
        stream = PretrainStream(data, seed=0, per_rank_batch=args.batch)
        print(
            f"source: {args.videos} H.264 videos, {args.width}x{args.height}, {args.seconds:g} s at 30 fps; "
            f"clips 16x224x224, stride 1, random start; {os.cpu_count()} CPU cores"
        )
        per_cpu_s, wall = one_core(stream, args.steps)
        print(f"in-process: {per_cpu_s:.1f} clips per CPU-second ({wall:.1f} clips/s wall)")
        print("workers  clips/s  clips/s per worker")
        for w in (int(x) for x in args.workers.split(",")):
            rate = with_workers(stream, w, args.steps)
            print(f"{w:7d}  {rate:7.1f}  {rate / w:18.1f}")

    print(f"\ncores per GPU to keep up, at the step rates `sweep plan {LADDER.name}` assumes:")
    print("rung  GPUs  steps/s  clips/s per GPU  cores per GPU")
    for p in plan_sweep(load_spec(LADDER)):
        if p.name in ("B", "L"):
            gpu_seconds = p.gpu_hours * 3600
            per_gpu = p.batch_size * p.steps / gpu_seconds
            steps_per_s = p.steps / (gpu_seconds / p.gpus)
            print(
                f"{p.name:4s}  {p.gpus:4d}  {steps_per_s:7.2f}  {per_gpu:15.0f}  {per_gpu / per_cpu_s:13.0f}"
            )


if __name__ == "__main__":
    main()
