"""Where a local-ladder run's time goes, phase by phase, beside what the arithmetic alone would take.

    python benchmarks/ladder_phases.py sweeps/local_ladder.yaml --runs runs [--probe micro3] [--json out.json]
        [--cpus 2]

Reads a finished run (nothing is trained again):
  - per rung, from status.json, workers/rank0.json and the rung's MLflow run (the tracker stamps every
    per-step point when it arrives): start-up (submission -> rank 0 in the training loop: Ray Train's
    worker group, torch.distributed, the DeepSpeed engine, resume), training steps (the trainer's own
    per-step seconds, data + forward/backward + ZeRO-3 optimizer step), val loss (the gap before each
    checkpoint step's point), checkpoint + export (the gap after it), and the fit's end (last step ->
    the driver's `train_s`);
  - per eval, the seconds its Ray task spent (evals/<step>/<task>-frozen.json).
Then measures, in this process, with one thread (what each Ray worker gets on this machine):
  - the fp32 matmul rate (512^3, the best of 20), which turns FLOPs into a floor;
  - with --probe RUNG, one training step of that rung in plain PyTorch (no DeepSpeed), split into
    data / forward+backward / AdamW, so the DeepSpeed step's remainder is ZeRO-3's hooks and gloo
    collectives; and every eval task of the spec on that rung's final export, split into clip
    rendering, features, readout training and scoring (timers around evals.run's own functions), with
    the readout's FLOPs counted by torch's FlopCounterMode.

Floors: a phase's matmul FLOPs (contracts.cost for the MAE; the readout's counted) / (workers x the
one-thread rate). Phases with no arithmetic (start-up, checkpoint writes, scoring) have none ("-").
Plain lines on stdout; --json writes the same rows. The last line is the work the phases held, in
CPU-seconds (a fit all its workers' CPUs from the moment they were free to its end, an eval its own for
its Ray task), and that work over --cpus: no schedule of these phases is shorter, so a faster run needs
shorter phases, not better packing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.cost import encoder_inference_flops, flops_per_clip  # noqa: E402
from contracts.layout import ReferencePaths, RungPaths, read_json, read_jsonl  # noqa: E402
from contracts.names import RUNG_KEY_TAG  # noqa: E402
from contracts.spec import RungConfig, SweepSpec, load_spec  # noqa: E402


@dataclass
class Phase:
    where: str  # a rung, a rung's eval, or "machine"
    phase: str
    wall_s: float
    flops: float | None = None  # matmul FLOPs of the phase (None: no arithmetic to speak of)
    floor_s: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.wall_s / self.floor_s if self.floor_s else None


def matmul_rate(n: int = 512, repeats: int = 20) -> float:
    """fp32 FLOP/s of one thread on an n^3 matmul (the best of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def mlflow_step_times(tracking: str, rung_key: str) -> dict[int, float]:
    """step -> seconds since the epoch at which the tracker received that step's train/loss."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{RUNG_KEY_TAG}` = '{rung_key}'",
    )
    if not runs:
        return {}
    return {m.step: m.timestamp / 1000 for m in client.get_metric_history(runs[0].info.run_id, "train/loss")}


def rung_phases(
    rung: RungConfig, runs_root: Path, tracking: str, rate: float, ends: dict[str, float]
) -> list[Phase]:
    """A trained rung's phases from its records (module docstring)."""
    paths = RungPaths.for_rung(rung, runs_root)
    status, rank0 = read_json(paths.status) or {}, read_json(paths.worker(0)) or {}
    steps = {r["step"]: r for r in read_jsonl(paths.metrics)}
    if not steps or "submitted" not in status:
        return []
    cores = rung.workers * rung.cpus_per_worker
    step_s = {s: rung.batch_size / r["train/clips_per_s"] for s, r in steps.items()}
    looped = rank0.get("time", 0)
    ready = cpus_freed(rung.key, status, looped, ends)
    out = [
        Phase(rung.name, "queued (CPUs held by other fits / evals)", ready - status["submitted"]),
        Phase(rung.name, "start-up (CPUs freed -> training loop)", looped - ready),
    ]
    train_flops = flops_per_clip(rung.model).train * rung.batch_size * len(steps)
    out.append(
        Phase(rung.name, "training steps", sum(step_s.values()), train_flops, train_flops / rate / cores)
    )
    stamps = mlflow_step_times(tracking, rung.key)
    ckpts = [s for s in steps if s % rung.checkpoint_interval == 0 or s == rung.steps]
    val = save = 0.0
    for s in ckpts:
        if s - 1 in stamps and s in stamps:
            val += max(0.0, stamps[s] - stamps[s - 1] - step_s[s])
        if s + 1 in stamps and s in stamps:
            save += max(0.0, stamps[s + 1] - stamps[s] - step_s[s + 1])
    f = flops_per_clip(rung.model)
    val_flops = (f.encoder_forward + f.decoder_forward + f.embed_forward) * rung.val_clips * len(ckpts)
    out.append(
        Phase(
            rung.name,
            f"val loss ({len(ckpts)} x {rung.val_clips} clips)",
            val,
            val_flops,
            val_flops / rate / cores,
        )
    )
    out.append(Phase(rung.name, "checkpoint + export (not the last)", save))
    if stamps and "train_s" in status:
        end = status["submitted"] + status["train_s"] - stamps[max(stamps)]
        out.append(Phase(rung.name, "last checkpoint + export + fit end", end))
    gaps = [
        stamps[s] - stamps[s - 1] - step_s[s]
        for s in stamps
        if s - 1 in stamps and s not in ckpts and s - 1 not in ckpts
    ]
    out.append(Phase(rung.name, "between steps (records, logging)", sum(max(0.0, g) for g in gaps)))
    return out


def release_times(spec: SweepSpec, runs_root: Path) -> dict[str, float]:
    """When each fit, rung eval and reference eval let go of its CPUs (seconds since the epoch)."""
    ends = {}
    for rung in spec.rungs():
        paths = RungPaths.for_rung(rung, runs_root)
        st = read_json(paths.status) or {}
        if "train_s" in st:
            ends[rung.key] = st["submitted"] + st["train_s"]
        for rec in paths.evals.glob("*/*.json"):  # `ended` where the driver wrote it, else the file's time
            ended = (read_json(rec) or {}).get("ended") or rec.stat().st_mtime
            ends[f"{rung.key}/{rec.parent.name}/{rec.stem}"] = ended
    for ref in spec.reference_configs():
        for task in spec.evals.tasks:
            rec_path = ReferencePaths.for_reference(ref, runs_root).eval_record(task, "frozen")
            rec = read_json(rec_path) or {}
            if "seconds" in rec:
                ends[f"{ref.key}/{task}"] = rec.get("ended") or rec_path.stat().st_mtime
    return ends


def cpus_freed(key: str, status: dict, looped: float, ends: dict[str, float]) -> float:
    """When a rung's CPUs were free: rungs wait for them (in the driver or in Ray's queue), so its
    start-up counts from its submission or the end of the last fit or eval before it reached its loop."""
    return max([status["submitted"], *(e for k, e in ends.items() if k != key and e <= looped)])


@dataclass
class Work:
    """CPU-seconds a run's phases held: a fit all its workers' CPUs from the moment they were free to its
    end (start-up, steps, val loss, checkpoints), an eval its own CPUs for its Ray task's seconds."""

    fits: float
    evals: float
    references: float
    wall_s: float  # the run's own: first submission to the last fit's or eval's end

    def floor_s(self, cpus: int) -> float:
        """No schedule of these phases on `cpus` CPUs ends sooner: the work over the machine."""
        return (self.fits + self.evals + self.references) / cpus


def held_work(spec: SweepSpec, runs_root: Path, ends: dict[str, float]) -> Work:
    """The CPU-seconds a finished (or stopped) run's fits and evals held, from its records and
    `release_times`."""
    fits = evals = references = 0.0
    started = []
    for rung in spec.rungs():
        paths = RungPaths.for_rung(rung, runs_root)
        status, rank0 = read_json(paths.status) or {}, read_json(paths.worker(0)) or {}
        if "train_s" in status and "time" in rank0:
            started.append(status["submitted"])
            span = status["submitted"] + status["train_s"] - cpus_freed(rung.key, status, rank0["time"], ends)
            fits += span * rung.workers * rung.cpus_per_worker
        for rec in paths.evals.glob("*/*.json"):
            evals += (read_json(rec) or {}).get("seconds", 0.0) * spec.evals.cpus
    for ref in spec.reference_configs():
        for task in spec.evals.tasks:
            rec = read_json(ReferencePaths.for_reference(ref, runs_root).eval_record(task, "frozen")) or {}
            references += rec.get("seconds", 0.0) * spec.evals.cpus
            if "started" in rec:
                started.append(rec["started"])
    wall = max(ends.values()) - min(started) if ends and started else 0.0
    return Work(fits, evals, references, wall)


def eval_phases(spec: SweepSpec, rung: RungConfig, runs_root: Path, rate: float) -> list[Phase]:
    """Each eval task's Ray-task seconds on the rung's final checkpoint."""
    paths = RungPaths.for_rung(rung, runs_root)
    out = []
    for task in spec.evals.tasks:
        rec = read_json(paths.eval_record(rung.steps, task, "frozen")) or {}
        if "seconds" in rec:
            out.append(Phase(rung.name, f"eval {task} (Ray task)", rec["seconds"]))
    return out


# ------------------------------------------------------------------ probes (one rung, in this process)


def train_probe(rung: RungConfig, rate: float, steps: int = 4) -> list[Phase]:
    """One rank's step of the rung in plain PyTorch (what DeepSpeed adds is the rest)."""
    from data4d.stream import PretrainStream
    from models.mae import VideoMAE, normalize_video, param_groups, random_masking

    per_rank = rung.batch_size // rung.workers
    model = VideoMAE(rung.model)
    opt = torch.optim.AdamW(param_groups(model, rung.optimizer.lr, rung.optimizer.weight_decay))
    stream = PretrainStream(rung.data, rung.seed, per_rank, 0, rung.workers)
    data = fwd = step = 0.0
    for s in range(steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        clips = stream.batch(s)
        visible, masked = random_masking(per_rank, rung.model, torch.Generator().manual_seed(s))
        t1 = time.perf_counter()
        loss = model(normalize_video(clips), visible, masked)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if s:
            data, fwd, step = data + t1 - t0, fwd + t2 - t1, step + t3 - t2
    t0 = time.perf_counter()
    for s in range(1, steps + 1):  # the same clips again: read back from the machine's clip cache
        stream.batch(s)
    cached = (time.perf_counter() - t0) / steps
    flops = flops_per_clip(rung.model).train * per_rank
    return [
        Phase(rung.name, "probe: one step's data (per rank), rendered", data / steps),
        Phase(rung.name, "probe: one step's data (per rank), from the cache", cached),
        Phase(rung.name, "probe: forward + backward, plain torch", fwd / steps, flops, flops / rate),
        Phase(rung.name, "probe: clip + AdamW, plain torch", step / steps),
    ]


def eval_probe(spec: SweepSpec, rung: RungConfig, runs_root: Path, rate: float) -> list[Phase]:
    """Every eval task on the rung's final export in this process, split by timers around evals.run's
    functions; the readout's FLOPs counted on its first forward of each task."""
    from torch.utils.flop_counter import FlopCounterMode

    import evals.run as er

    spent: dict[str, float] = {}
    per_clip: dict[str, float] = {}
    current = {"task": ""}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                key = f"{current['task']}/{name}"
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t

        return wrapper

    class CountedReadout(er.AttentionReadout):
        def forward(self, f, *a, **k):
            task = current["task"]
            if task in per_clip:
                return super().forward(f, *a, **k)
            with FlopCounterMode(display=False) as m:
                out = super().forward(f, *a, **k)
            per_clip[task] = m.get_total_flops() / len(f)
            return out

    real_train = er.train_readout

    def fit_named(task, *a, **k):
        current["task"] = task.name
        return real_train(task, *a, **k)

    patched = {
        "load_clips": timed("clips", er.load_clips),
        "frozen_features": timed("features", er.frozen_features),
        "train_readout": timed("readout training", fit_named),
        "fit_and_score": timed("fit + score", er.fit_and_score),
        "AttentionReadout": CountedReadout,
    }
    export = RungPaths.for_rung(rung, runs_root).export(rung.steps)
    out = []
    with contextlib.ExitStack() as stack:
        for name, fn in patched.items():
            stack.enter_context(_swap(er, name, fn))
        for task in spec.evals.tasks:
            readout = spec.evals.readout_for(task)
            current["task"] = task
            t = time.perf_counter()
            er.evaluate(export, task, readout=readout, data=spec.data)
            total = time.perf_counter() - t
            clips = spent.get(f"{task}/clips", 0.0)
            feats = spent.get(f"{task}/features", 0.0)
            train = spent.get(f"{task}/readout training", 0.0)
            score = spent.get(f"{task}/fit + score", 0.0) - train
            n = readout.train_clips + readout.val_clips + readout.test_clips
            f_flops = encoder_inference_flops(rung.model) * n if feats > 0.05 else 0.0
            fwd = readout.epochs * readout.val_clips + readout.val_clips + readout.test_clips
            r_flops = per_clip.get(task, 0.0) * (3 * readout.epochs * readout.train_clips + fwd)
            out += [
                Phase(rung.name, f"probe eval {task}: clips (render/cache)", clips),
                Phase(rung.name, f"probe eval {task}: features", feats, f_flops, f_flops / rate or None),
                Phase(rung.name, f"probe eval {task}: readout training", train, r_flops, r_flops / rate),
                Phase(rung.name, f"probe eval {task}: scoring + bootstrap SEs", score),
                Phase(
                    rung.name,
                    f"probe eval {task}: rest (load export, task setup)",
                    total - clips - feats - train - score,
                ),
            ]
    return out


@contextlib.contextmanager
def _swap(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def print_table(rows: list[Phase]) -> None:
    print(f"{'where':<8} {'phase':<52} {'wall s':>8} {'GFLOP':>8} {'floor s':>8} {'x floor':>8}")
    for r in rows:
        gf = f"{r.flops / 1e9:8.2f}" if r.flops else f"{'-':>8}"
        fl = f"{r.floor_s:8.3f}" if r.floor_s else f"{'-':>8}"
        x = f"{r.ratio:8.1f}" if r.ratio else f"{'-':>8}"
        print(f"{r.where:<8} {r.phase:<52} {r.wall_s:8.2f} {gf} {fl} {x}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="the runs root of the finished run")
    ap.add_argument("--tracking", help="MLflow URI (default: sqlite:///<runs>/mlflow.db)")
    ap.add_argument("--probe", help="a rung to probe in this process (train step + its evals)")
    ap.add_argument("--json", type=Path, help="write the rows here too")
    ap.add_argument(
        "--cpus", type=int, default=os.cpu_count(), help="the CPUs the run had (default: this machine's)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    tracking = args.tracking or f"sqlite:///{(args.runs / 'mlflow.db').resolve()}"
    rate = matmul_rate()
    rows = [Phase("machine", "fp32 matmul 512^3, one thread (GFLOP/s in the wall column)", rate / 1e9)]
    ends = release_times(spec, args.runs)
    for ref in spec.reference_configs():  # evaluated, never trained: their evals hold CPUs too
        for task in spec.evals.tasks:
            rec = read_json(ReferencePaths.for_reference(ref, args.runs).eval_record(task, "frozen")) or {}
            if "seconds" in rec:
                rows.append(Phase(ref.name, f"reference eval {task} (Ray task)", rec["seconds"]))
    for rung in spec.rungs():
        rows += rung_phases(rung, args.runs, tracking, rate, ends)
        rows += eval_phases(spec, rung, args.runs, rate)
    if args.probe:
        [rung] = [r for r in spec.rungs() if r.name == args.probe]
        rows += train_probe(rung, rate)
        rows += eval_probe(spec, rung, args.runs, rate)
    print_table(rows)
    work = held_work(spec, args.runs, ends)
    print(
        f"CPU-seconds held: fits {work.fits:.0f}, evals {work.evals:.0f}, references {work.references:.0f}; "
        f"on {args.cpus} CPUs no schedule of these phases takes under {work.floor_s(args.cpus):.0f} s "
        f"(the run: {work.wall_s:.0f} s from its first submission to its last end)"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"ratio": r.ratio} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
