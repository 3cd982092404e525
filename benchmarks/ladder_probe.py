"""Probe one local-ladder rung in plain PyTorch (no Ray, no DeepSpeed): pretrain, held-out loss, frozen evals.

    python benchmarks/ladder_probe.py --width 48 --depth 3 --lr 2e-3 --steps 120 [--eval]

Pretrains the project's video MAE (models.mae) on SyntheticWorld pretrain clips with the local
ladder's recipe (AdamW, betas 0.9/0.95, cosine to min_lr_ratio after a linear warmup, grad clip 1),
then prints the mean training loss of the last 20% of steps, the held-out MAE loss ("val": the
first --val-clips clips of the world's val split with masks from a fixed seed, the same for every
rung) and the seconds per step on this machine. With --eval it exports the encoder and runs the
frozen evals (evals.run) with the given readout settings, printing each task's headline metric
with a bootstrap standard error over test clips, the trivial baseline's (with its own SE), and
how many SEs apart they are.

--floor prints the held-out loss of predictors that need no training (see `floors`), to tell
how much of the loss is unpredictable from the visible tokens.

Every option has the local ladder's old default; run with nice -n 19 and 1 thread on a shared
machine. Output is plain "key value" lines, one result per line.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.cost import encoder_params  # noqa: E402
from contracts.spec import Data, Readout  # noqa: E402
from contracts.tasks import TASKS as CATALOG  # noqa: E402
from contracts.tasks import higher_is_better  # noqa: E402
from data4d.world import SyntheticWorld  # noqa: E402
from models.mae import MAEConfig, VideoMAE, ViTShape, normalize_video, random_masking  # noqa: E402

VAL_MASK_SEED = 12345


def world_kwargs(args) -> dict:
    """SyntheticWorld arguments: the clip shape plus any --world key=value (tuples as a:b)."""
    kw = dict(frames=args.frames, size=args.size, seed=0)
    for item in filter(None, args.world.split(",")):
        k, v = item.split("=")
        kw[k] = tuple(float(x) for x in v.split(":")) if ":" in v else (int(v) if v.isdigit() else float(v))
    return kw


def stack(world: SyntheticWorld, start: int, n: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([world[start + j]["video"] for j in range(n)]))


class ClipCache:
    """Pretraining videos rendered once into a .npy per clip shape (--cache DIR), so that a series of
    probes on a busy machine spends its time training; the bytes are those of `world[i]["video"]`."""

    def __init__(self, world: SyntheticWorld, directory: str, n: int):
        self.world = world
        shape = (n, world.frames, world.size, world.size, 3)
        import hashlib

        import data4d.world as wm

        # Named by the world's source (every unit of the package) and knobs too, so a changed world
        # never reads stale clips.
        source = "".join(f.read_text() for f in sorted(Path(wm.__file__).parent.glob("*.py")))
        sig = hashlib.sha256((source + repr(sorted(vars(world).items(), key=str))).encode()).hexdigest()[:10]
        path = Path(directory) / f"pretrain_{world.frames}x{world.size}_{sig}_{n}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(".tmp.npy")
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for i in range(n):
                arr[i] = world[i]["video"]
            arr.flush()
            del arr
            tmp.rename(path)
        self.arr = np.load(path, mmap_mode="r")

    def batch(self, start: int, n: int) -> torch.Tensor:
        if start + n <= len(self.arr):
            return torch.from_numpy(np.array(self.arr[start : start + n]))
        return stack(self.world, start, n)


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


@torch.no_grad()
def val_loss(model: VideoMAE, val: torch.Tensor, batch: int = 64) -> float:
    """MAE loss on fixed clips with fixed masks (the masks depend only on the clip count)."""
    model.eval()
    vis, msk = random_masking(len(val), model.cfg, torch.Generator().manual_seed(VAL_MASK_SEED))
    tot = 0.0
    for i in range(0, len(val), batch):
        tot += model(
            normalize_video(val[i : i + batch]), vis[i : i + batch], msk[i : i + batch]
        ).item() * len(val[i : i + batch])
    model.train()
    return tot / len(val)


def floors(cfg: MAEConfig, val: torch.Tensor) -> dict[str, float]:
    """Held-out loss of predictors with no training, on the same clips and masks as `val_loss`.

    zero: predict 0 (the mid grey of normalised pixels); mean_visible: every masked tubelet is the
    clip's mean visible tubelet; copy_time: a masked tubelet is the nearest-in-time visible tubelet
    at the same place (else mean_visible) -- what a model gets from "things mostly stay put";
    oracle_pos: each masked tubelet is the mean over val clips of that token position (a prior the
    model could learn, computed on the answers).
    """
    m = VideoMAE(cfg)
    x = m.patchify(normalize_video(val))  # (B, N, P)
    B, N, P = x.shape
    vis, msk = random_masking(B, cfg, torch.Generator().manual_seed(VAL_MASK_SEED))

    def loss(pred):  # pred (B, N, P) for all tokens; scored on the masked ones
        t = torch.gather(x, 1, msk[..., None].expand(-1, -1, P))
        q = torch.gather(pred, 1, msk[..., None].expand(-1, -1, P))
        if cfg.norm_target:  # compare shapes: both normalised per tubelet (a flat guess scores 1)
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
            q = (q - q.mean(-1, keepdim=True)) / (q.var(-1, keepdim=True) + 1e-6).sqrt()
        return float(((q - t) ** 2).mean())

    out = {"zero": loss(torch.zeros_like(x))}
    visible = torch.zeros(B, N, dtype=torch.bool)
    visible.scatter_(1, vis, True)
    vmean = (x * visible[..., None]).sum(1, keepdim=True) / visible.sum(1)[:, None, None]
    out["mean_visible"] = loss(vmean.expand(B, N, P))
    gt, gh, gw = cfg.grid
    xs, vs = x.view(B, gt, gh * gw, P), visible.view(B, gt, gh * gw)
    pred = vmean.expand(B, N, P).clone().view(B, gt, gh * gw, P)
    for t in range(gt):
        filled = torch.zeros_like(vs[:, t])
        for dt in sorted(range(-gt + 1, gt), key=lambda d: (abs(d), d)):
            if dt == 0 or not 0 <= t + dt < gt:
                continue
            take = vs[:, t + dt] & ~filled
            pred[:, t][take] = xs[:, t + dt][take]
            filled |= take
    out["copy_time"] = loss(pred.view(B, N, P))
    out["oracle_pos"] = loss(x.mean(0, keepdim=True).expand(B, N, P))
    return out


def param_groups(model: VideoMAE, lr: float, mup_base: int | None):
    """One group, or muP-style (Adam): every matrix whose fan-in is the encoder width (the encoder blocks'
    matrices and the decoder's input projection) gets lr * base / width; the rest (tubelet embedding,
    position embeddings, norms, biases, the decoder) keeps lr."""
    if not mup_base:
        return [{"params": list(model.parameters()), "lr": lr, "scale": 1.0}]
    D = model.cfg.encoder.width
    hidden, rest = [], []
    for name, p in model.named_parameters():
        is_hidden = (name.startswith("encoder.blocks") and p.ndim == 2) or name == "decoder.embed.weight"
        (hidden if is_hidden else rest).append(p)
    return [
        {"params": hidden, "lr": lr * mup_base / D, "scale": mup_base / D},
        {"params": rest, "lr": lr, "scale": 1.0},
    ]


def bootstrap(
    task, out: torch.Tensor, clips: dict, headline: str, reps: int, seed: int = 0
) -> tuple[float, float]:
    """(std over bootstrap resamples of test clips of the readout's, and of the baseline's,
    headline metric)."""
    rng = np.random.default_rng(seed)
    n = len(clips["video"])
    if headline == "abs_rel":  # depth pools pixels over clips: bootstrap per-clip sums (same statistic, fast)
        gt = clips["depth"].astype(np.float64)
        ok = np.isfinite(gt) & (gt > 0)
        pred = task.unpatchify(out + task.prior).double().exp().numpy()
        g = np.where(ok, gt, 1.0)

        def per_clip(p):
            err = np.where(ok, np.abs(g - np.maximum(p, 1e-6)) / g, 0.0)
            return err.reshape(n, -1).sum(1), ok.reshape(n, -1).sum(1)

        stats = [per_clip(pred), per_clip(np.broadcast_to(task.mean_depth, gt.shape))]
        idx = rng.integers(0, n, (reps, n))
        return tuple(float(np.std(s[idx].sum(1) / c[idx].sum(1))) for s, c in stats)
    vals, base = [], []
    for _ in range(reps):
        idx = rng.integers(0, n, n)
        sub = {k: np.asarray(v)[idx] for k, v in clips.items()}
        vals.append(task.metrics(out[torch.from_numpy(idx)], sub)[headline])
        base.append(task.baseline(sub)[headline])
    return float(np.nanstd(vals)), float(np.nanstd(base))


def run_evals(export: Path, tasks: list[str], readout: Readout, reps: int) -> dict[str, dict[str, float]]:
    import evals.run as er

    record = {}
    orig = dict(er.TASKS)

    def recording(cls):
        class Rec(cls):
            def metrics(self, out, clips):  # the last call is on test (see evals.run.fit_and_score)
                record[self.name] = (self, out, clips)
                return super().metrics(out, clips)

        return Rec

    try:
        for t in tasks:
            er.TASKS[t] = recording(orig[t])
        res = {}
        for t in tasks:
            t0 = time.perf_counter()
            r = er.evaluate(export, t, readout=readout, data=Data(frames=8, resolution=32, tubelet=(2, 8, 8)))
            secs = (
                time.perf_counter() - t0
            )  # what the sweep's eval job spends (clips and features are cached per process)
            h = CATALOG[t].headline
            task, out, clips = record[t]
            se, se_b = bootstrap(task, out, clips, h, reps)
            res[t] = {
                "metric": r[h],
                "se": se,
                "baseline": r[f"baseline_{h}"],
                "se_base": se_b,
                "secs": secs,
                "headline": h,
            }
        return res
    finally:
        er.TASKS.update(orig)


def from_spec(args):
    """Overwrite args with what --spec says for --rung (what `sweep run` would train and evaluate)."""
    from contracts.spec import load_spec

    spec = load_spec(args.spec)
    r = spec.rung(args.rung)
    m, pt = r.model, spec.pretraining
    args.width, args.depth, args.mlp, args.heads = (
        m.encoder.width,
        m.encoder.depth,
        m.encoder.mlp,
        m.encoder.heads,
    )
    args.dec = ",".join(str(x) for x in (m.decoder.width, m.decoder.depth, m.decoder.mlp, m.decoder.heads))
    args.lr, args.wd, args.steps, args.batch = r.optimizer.lr, r.optimizer.weight_decay, r.steps, r.batch_size
    args.warmup, args.min_lr_ratio = r.schedule.warmup_steps, r.schedule.min_lr_ratio
    args.frames, args.size, args.tubelet = m.frames, m.size, ",".join(map(str, m.tubelet))
    args.mask, args.norm, args.seed = m.mask_ratio, m.norm_target, pt.seed
    if r.schedule.kind != "cosine" or r.optimizer.grad_clip != 1.0 or tuple(r.optimizer.betas) != (0.9, 0.95):
        raise SystemExit("ladder_probe reproduces cosine schedules, grad_clip 1 and betas (0.9, 0.95) only")
    return spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--width", type=int, default=48)
    a("--depth", type=int, default=3)
    a("--mlp", type=int, default=0, help="0: 4 x width")
    a("--heads", type=int, default=0, help="0: width / 16 (at least 1)")
    a("--dec", default="64,1,256,2", help="decoder width,depth,mlp,heads")
    a("--lr", type=float, default=2e-3)
    a("--mup-base", type=int, default=0, help="muP-style: encoder hidden matrices get lr * base / width")
    a("--wd", type=float, default=0.05)
    a("--steps", type=int, default=120)
    a("--warmup", type=int, default=10)
    a("--min-lr-ratio", type=float, default=0.1)
    a("--batch", type=int, default=32)
    a("--frames", type=int, default=8)
    a("--size", type=int, default=32)
    a("--tubelet", default="2,8,8")
    a("--mask", type=float, default=0.75)
    a("--norm", action="store_true", help="normalised pixel targets")
    a("--world", default="", help="SyntheticWorld knobs, e.g. objects=5,pan=0:0")
    a("--seed", type=int, default=0)
    a("--val-clips", type=int, default=256)
    a("--log-every", type=int, default=0)
    a("--cache", default="", help="render pretraining clips once into DIR (see ClipCache)")
    a("--cache-clips", type=int, default=9600, help="how many clips the cache holds; later ones are rendered")
    a("--floor", action="store_true", help="print the loss of untrained predictors and exit")
    a("--eval", default="", help="comma-separated tasks to evaluate frozen, or 'all'")
    a(
        "--readout",
        default="width=64,heads=4,epochs=6,batch_size=16,lr=2e-3,weight_decay=0.05,train_clips=512,val_clips=64,test_clips=128",
    )
    a("--tracking-readout", default="epochs=20,lr=1e-3")
    a("--boot", type=int, default=100)
    a("--save", default="", help="keep the export here")
    a("--load", default="", help="skip pretraining: evaluate this export (written by --save)")
    a(
        "--spec",
        default="",
        help="take the rung's shape, recipe and readouts from this sweep spec (with --rung)",
    )
    a("--rung", default="", help="rung name in --spec")
    args = p.parse_args()
    spec = from_spec(args) if args.spec else None
    torch.set_num_threads(1)

    heads = args.heads or max(1, args.width // 16)
    dec = ViTShape(*map(int, args.dec.split(",")))
    cfg = MAEConfig(
        encoder=ViTShape(args.width, args.depth, args.mlp or 4 * args.width, heads),
        decoder=dec,
        frames=args.frames,
        size=args.size,
        tubelet=tuple(map(int, args.tubelet.split(","))),
        mask_ratio=args.mask,
        norm_target=args.norm,
    )
    val = stack(SyntheticWorld(**world_kwargs(args), split="val"), 0, args.val_clips)
    if args.floor:
        for k, v in floors(cfg, val).items():
            print(f"floor_{k} {v:.5f}")
        return

    if args.load:
        from models.export import load_encoder

        enc, rung = load_encoder(args.load)
        cfg = enc.cfg
        model = VideoMAE(cfg)
        model.encoder.load_state_dict(enc.state_dict())
        args.steps = 0
        print(f"loaded {args.load}: encoder {cfg.encoder} params {encoder_params(cfg)}", flush=True)
    else:
        torch.manual_seed(args.seed)
        model = VideoMAE(cfg)
    groups = param_groups(model, args.lr, args.mup_base)
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.wd)
    world = SyntheticWorld(**world_kwargs(args), split="pretrain")
    cache = ClipCache(world, args.cache, args.cache_clips) if args.cache else None
    n_enc = encoder_params(cfg)
    print(
        f"encoder {cfg.encoder.width}/{cfg.encoder.depth}/{cfg.encoder.mlp}/{cfg.encoder.heads} "
        f"params {n_enc} "
        f"decoder {cfg.decoder.width},{cfg.decoder.depth},{cfg.decoder.mlp},{cfg.decoder.heads} "
        f"lr {args.lr} mup_base {args.mup_base} steps {args.steps} warmup {args.warmup} batch {args.batch} "
        f"clip {cfg.frames}x{cfg.size} tubelet {cfg.tubelet} norm {int(cfg.norm_target)}",
        flush=True,
    )
    losses, t_train, t_data = [], 0.0, 0.0
    for s in range(args.steps):
        f = lr_factor(s, args.steps, args.warmup, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = args.lr * g["scale"] * f
        t0 = time.perf_counter()
        clips = cache.batch(s * args.batch, args.batch) if cache else stack(world, s * args.batch, args.batch)
        t1 = time.perf_counter()
        vis, msk = random_masking(args.batch, cfg, torch.Generator().manual_seed(s))
        loss = model(normalize_video(clips), vis, msk)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t2 = time.perf_counter()
        t_data, t_train = t_data + t1 - t0, t_train + t2 - t1
        losses.append(loss.item())
        if args.log_every and (s + 1) % args.log_every == 0:
            print(
                f"step {s + 1} train {np.mean(losses[-args.log_every :]):.5f} val {val_loss(model, val):.5f}",
                flush=True,
            )
    tail = max(1, args.steps // 5)
    if args.steps:
        print(
            f"params {n_enc} train_tail {np.mean(losses[-tail:]):.5f} val {val_loss(model, val):.5f} "
            f"s_per_step {t_train / args.steps:.3f} data_s_per_step {t_data / args.steps:.3f}",
            flush=True,
        )

    state = {k[len("encoder.") :]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    if args.save and not args.load:
        from models.export import save_encoder

        save_encoder(state, {"model": cfg.to_dict(), "data": {}}, Path(args.save))
    if args.eval:
        from models.export import save_encoder

        tasks = list(CATALOG) if args.eval == "all" else args.eval.split(",")
        kv = {
            k: (int(v) if v.isdigit() else float(v))
            for k, v in (x.split("=") for x in args.readout.split(","))
        }
        readout = Readout(**kv)
        tr = {
            k: (int(v) if v.isdigit() else float(v))
            for k, v in (x.split("=") for x in args.tracking_readout.split(",") if x)
        }
        with tempfile.TemporaryDirectory() as d:
            export = Path(args.load or args.save or Path(d) / "export")
            if not (args.load or args.save):
                save_encoder(state, {"model": cfg.to_dict(), "data": {}}, export)
            for t in tasks:
                ro = readout.model_copy(update=tr) if t == "point_tracking" else readout
                if spec is not None:
                    ro = spec.evals.readout_for(t)
                r = run_evals(export, [t], ro, args.boot)[t]
                sign = 1 if higher_is_better(r["headline"]) else -1
                z = sign * (r["metric"] - r["baseline"]) / max(r["se"], 1e-12)
                print(
                    f"eval {t} {r['headline']} {r['metric']:.4f} se {r['se']:.4f} "
                    f"baseline {r['baseline']:.4f} "
                    f"se_base {r['se_base']:.4f} z_vs_base {z:.1f} secs {r['secs']:.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
