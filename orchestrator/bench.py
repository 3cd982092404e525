"""`sweep bench`: how fast is one pretraining step, and how does it compare?

For each chosen rung this times the steady-state training step (forward +
backward + AdamW step) of our fast path on one device, and the same step of
transformers' VideoMAEForPreTraining (the peer) at the same shapes, batch, mask
count and precision. The fast path:

- bf16 autocast on CUDA (fp32 params, optimiser state and loss), fused AdamW;
- SDPA attention (flash kernels on an H100/H200);
- the encoder runs on the visible tokens only, the decoder head on the masked
  tokens only (models/mae.py), so no work is spent on tokens that are thrown away;
- optional torch.compile;
- inputs staged on the device before the clock starts (pinned memory,
  non-blocking copies) and no host sync inside the timed loop.

Throughput is turned into TFLOP/s with the analytic training FLOPs of
models/cost.py. The peer's matmuls have the same shapes as ours (its K has no
bias, its position embeddings are fixed sin-cos: neither costs a matmul), so the
same FLOPs per clip hold for both and TFLOP/s compare like with like
(tests/test_bench.py checks this with torch's FlopCounterMode). How the rows are shown:
orchestrator.bench_table.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from contracts.cost import flops_per_clip
from contracts.shapes import SIZES
from contracts.spec import SpecError
from models.mae import MAEConfig, VideoMAE, ViTShape, normalize_video, random_masking
from orchestrator.training.loop import peak_flops

TINY = ViTShape(width=64, depth=2, mlp=256, heads=4)  # the `--tiny` encoder: seconds on a laptop CPU
MAX_BATCH_RUNGS = ("B", "L")  # rungs whose largest micro-batch is searched (GPU only)
COLUMNS = (
    "rung",
    "impl",
    "device",
    "precision",
    "compile",
    "batch",
    "params",
    "flops_per_clip",
    "step_ms",
    "clips_per_s",
    "tokens_per_s",
    "tflops",
    "mfu",
    "mfu_datasheet",
    "peak_mem_gib",
    "max_micro_batch",
    "vs_peer",
    "peak_tflops_measured",
    "peak_tflops_datasheet",
)


def bench_config(rung: str, tiny: bool = False) -> MAEConfig:
    """The 4DS clip (16x224x224, tubelet 2x16x16, mask 0.95, decoder 384/4/1536/6), or a CPU-sized one."""
    if rung != "tiny" and rung not in SIZES:
        raise SpecError(f"unknown rung {rung!r} for bench; known: tiny, {', '.join(SIZES)}")
    encoder = TINY if rung == "tiny" else SIZES[rung]
    if tiny:
        return MAEConfig(
            encoder=encoder,
            decoder=ViTShape(32, 1, 128, 2),
            frames=8,
            size=32,
            tubelet=(2, 8, 8),
            mask_ratio=0.75,
        )
    return MAEConfig(encoder=encoder)


# ------------------------------------------------------------------ inputs


@dataclass
class Batch:
    video: torch.Tensor  # (B, T, H, W, C) uint8, as the data stream yields it
    visible: torch.Tensor  # (B, K) token indices
    masked: torch.Tensor  # (B, N-K)
    bool_masked: torch.Tensor  # (B, N) True where masked: the peer's form of the same mask


def stage_batches(
    cfg: MAEConfig,
    batch: int,
    device: torch.device,
    count: int = 2,
    seed: int = 0,
    video_on_device: bool = False,
) -> list[Batch]:
    """`count` random batches put on `device` once, before any timing.

    Video goes over as uint8 (4x fewer bytes than float) and is normalised on the
    device inside the step, as in training. `video_on_device` draws the clips on
    the device instead (the memory search: gigabytes of pinned host memory would
    only slow it down).
    """
    g = torch.Generator().manual_seed(seed)
    pin = device.type == "cuda"
    shape = (batch, cfg.frames, cfg.size, cfg.size, cfg.channels)
    out = []
    for _ in range(count):
        if video_on_device:
            video = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
        else:
            video = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        visible, masked = random_masking(batch, cfg, g)
        bool_masked = torch.zeros(batch, cfg.num_tokens, dtype=torch.bool).scatter_(1, masked, True)
        tensors = [t.pin_memory() if pin else t for t in (video, visible, masked, bool_masked)]
        out.append(Batch(*(t.to(device, non_blocking=True) for t in tensors)))
    return out


# ------------------------------------------------------------------ the two models and their steps


def autocast(device_type: str, precision: str):
    """bf16: matmuls and attention in bf16; params, optimiser state and the loss stay fp32."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ours_loss(model: nn.Module, b: Batch, precision: str) -> torch.Tensor:
    with autocast(b.video.device.type, precision):
        return model(normalize_video(b.video), b.visible, b.masked)


def peer_model(cfg: MAEConfig) -> nn.Module:
    """transformers' VideoMAEForPreTraining with our encoder, decoder and clip shapes (raises ImportError)."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    t, h, w = cfg.tubelet
    assert h == w, "VideoMAEForPreTraining takes square patches"
    e, d = cfg.encoder, cfg.decoder
    hf = VideoMAEConfig(
        image_size=cfg.size,
        patch_size=h,
        num_channels=cfg.channels,
        num_frames=cfg.frames,
        tubelet_size=t,
        hidden_size=e.width,
        num_hidden_layers=e.depth,
        num_attention_heads=e.heads,
        intermediate_size=e.mlp,
        decoder_hidden_size=d.width,
        decoder_num_hidden_layers=d.depth,
        decoder_num_attention_heads=d.heads,
        decoder_intermediate_size=d.mlp,
        qkv_bias=True,  # q and v biases (HF never has a k bias)
        use_mean_pooling=False,  # a final encoder LayerNorm, as ours has
        norm_pix_loss=cfg.norm_target,
        attn_implementation="sdpa",  # its fastest stock attention; "eager" would be an unfair peer
    )
    return VideoMAEForPreTraining(hf)


def peer_loss(model: nn.Module, b: Batch, precision: str) -> torch.Tensor:
    with autocast(b.video.device.type, precision):
        video = normalize_video(b.video).transpose(1, 2)  # HF takes (B, T, C, H, W)
        return model(video, bool_masked_pos=b.bool_masked).loss


def make_step(
    model: nn.Module, loss_fn: Callable, precision: str, device: torch.device
) -> Callable[[Batch], torch.Tensor]:
    """One training step as in pretrain.py: forward, backward, clip, AdamW. Returns the loss, never syncs."""
    params = [p for p in model.parameters() if p.requires_grad]
    # fused=True: one kernel for the whole update instead of a handful per tensor.
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=device.type == "cuda")

    def step(b: Batch) -> torch.Tensor:
        loss = loss_fn(model, b, precision)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the norm stays a device tensor: no sync
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


# ------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    step: Callable, batches: list[Batch], device: torch.device, steps: int, warmup: int, repeats: int
) -> float:
    """Median seconds per step over `repeats` runs of `steps` steps, after `warmup` untimed steps."""
    for i in range(warmup):  # compilation, cuDNN/cuBLAS autotuning, allocator growth, AdamW state
        step(batches[i % len(batches)])
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(steps):
                step(batches[i % len(batches)])
            end.record()
            end.synchronize()  # the only sync: after the timed steps
            times.append(start.elapsed_time(end) / 1e3 / steps)
        else:
            t0 = time.perf_counter()
            for i in range(steps):
                step(batches[i % len(batches)])
            times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def measure_matmul_peak(device: torch.device, n: int = 8192, iters: int = 50) -> float | None:
    """Dense bf16 matmul FLOP/s this GPU actually reaches: the ceiling MFU is also quoted against."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        torch.mm(a, b, out=c)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        torch.mm(a, b, out=c)
    end.record()
    end.synchronize()
    return 2 * n**3 * iters / (start.elapsed_time(end) / 1e3)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def doubling_search(fits: Callable[[int], bool], start: int = 8, limit: int = 4096) -> int | None:
    """Largest start x 2^k <= limit with fits(b) true, stopping at the first that does not; None if
    start fails."""
    best, b = None, start
    while b <= limit and fits(b):
        best, b = b, 2 * b
    return best


def max_micro_batch(
    cfg: MAEConfig, device: torch.device, precision: str, start: int = 8, limit: int = 4096
) -> int | None:
    """Largest micro-batch whose eager training step fits on the GPU (None on CPU, or if even `start`
    does not).

    A doubling search, so the answer is within 2x of the true limit. Eager, because
    a compiled model would recompile for every batch size; compiled steps usually
    need less memory, so this is a lower bound for `--compile`.
    """
    if device.type != "cuda":
        return None
    torch.manual_seed(0)
    model = VideoMAE(cfg).to(device)
    step = make_step(model, ours_loss, precision, device)

    def fits(b: int) -> bool:
        oom = False
        try:
            batch = stage_batches(cfg, b, device, count=1, video_on_device=True)[0]
            for _ in range(2):  # the second step also holds AdamW's state
                step(batch)
            sync(device)
        except torch.cuda.OutOfMemoryError:
            oom = True  # freed below, outside the except block, once its traceback no longer pins tensors
        batch = None
        model.zero_grad(set_to_none=True)
        _free(device)
        return not oom

    best = doubling_search(fits, start, limit)
    model = step = None  # let the next rung have the memory
    _free(device)
    return best


# ------------------------------------------------------------------ the benchmark


def _bench_one(
    impl: str,
    cfg: MAEConfig,
    batch: int,
    device: torch.device,
    precision: str,
    compile: bool,
    steps: int,
    warmup: int,
    repeats: int,
) -> dict:
    torch.manual_seed(0)
    model = (VideoMAE(cfg) if impl == "sweep4d" else peer_model(cfg)).to(device)
    params = sum(p.numel() for p in model.parameters())
    loss_fn = ours_loss if impl == "sweep4d" else peer_loss
    if compile:
        model = torch.compile(model)
    step = make_step(model, loss_fn, precision, device)
    batches = stage_batches(cfg, batch, device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_step(step, batches, device, steps, warmup, repeats)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, step, batches
    _free(device)
    return {"impl": impl, "params": params, "step_ms": 1e3 * seconds, "peak_mem_gib": peak_mem}


def peer_available(say: Callable[[str], None]) -> bool:
    """Whether transformers can be imported to time its VideoMAE; says which, or why not."""
    try:
        import transformers
    except ImportError:
        say(
            "peer skipped: transformers is not installed (pip install transformers to compare with "
            "VideoMAEForPreTraining)"
        )
        return False
    say(f"peer: transformers {transformers.__version__} VideoMAEForPreTraining, SDPA attention")
    return True


def run_bench(
    rungs: list[str] | None = None,
    tiny: bool = False,
    batch: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
    compile: bool = False,
    peer: bool = True,
    device: str | torch.device | None = None,
    precision: str | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """Time the training step of each rung (ours, then the peer); one dict per (rung, impl) with COLUMNS
    as keys.

    Defaults: rungs S, B, L (["tiny"] with `tiny`); the first CUDA device else the
    CPU; bf16 on CUDA, fp32 on CPU; batch 64 on CUDA, 2 on CPU (8 with `tiny`).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    rungs = list(rungs or (["tiny"] if tiny else ["S", "B", "L"]))
    cfgs = {r: bench_config(r, tiny) for r in rungs}  # unknown rungs fail here, before any work
    precision = precision or ("bf16" if cuda else "fp32")
    if precision not in ("bf16", "fp32"):
        raise SpecError(f"precision must be bf16 or fp32, got {precision!r}")
    batch = batch or (64 if cuda else 8 if tiny else 2)
    if batch < 1:
        raise SpecError(f"batch must be at least 1, got {batch}")
    steps = steps or (20 if cuda else 5)
    warmup = warmup or (5 if cuda else 2)
    repeats = repeats or (5 if cuda else 3)
    say = log or (lambda line: None)
    if cuda:
        torch.cuda.set_device(device)

    peer = peer and peer_available(say)
    measured = measure_matmul_peak(device)
    datasheet = peak_flops(device)
    if cuda:
        sheet = f"{datasheet / 1e12:.0f} TFLOP/s" if datasheet else "unknown for this GPU"
        say(
            f"{torch.cuda.get_device_name(device)}: bf16 matmul peak measured {measured / 1e12:.0f} TFLOP/s, "
            f"datasheet {sheet}"
        )

    rows = []
    for rung, cfg in cfgs.items():
        flops = flops_per_clip(cfg).train
        impls = ["sweep4d", "hf-videomae"] if peer else ["sweep4d"]
        results = []
        for impl in impls:
            try:
                r = _bench_one(impl, cfg, batch, device, precision, compile, steps, warmup, repeats)
            # a peer that breaks (a transformers change, OOM) must not cost us our rows
            except Exception as e:
                if impl == "sweep4d":
                    raise
                say(f"{rung} peer failed, no ratio: {type(e).__name__}: {e}")
                r = None
            if r is None:
                _free(device)
                continue
            clips_per_s = batch / (r["step_ms"] / 1e3)
            achieved = clips_per_s * flops
            results.append(
                {
                    "rung": rung,
                    "impl": impl,
                    "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                    "precision": precision,
                    "compile": compile,
                    "batch": batch,
                    "params": r["params"],
                    "flops_per_clip": flops,
                    "step_ms": r["step_ms"],
                    "clips_per_s": clips_per_s,
                    "tokens_per_s": clips_per_s * cfg.num_tokens,  # every token of the clip, masked or not
                    "tflops": achieved / 1e12,
                    "mfu": achieved / measured if measured else None,
                    "mfu_datasheet": achieved / datasheet if datasheet else None,
                    "peak_mem_gib": r["peak_mem_gib"],
                    "max_micro_batch": None,
                    "vs_peer": None,
                    "peak_tflops_measured": measured / 1e12 if measured else None,
                    "peak_tflops_datasheet": datasheet / 1e12 if datasheet else None,
                }
            )
            say(
                f"{rung} {impl}: {r['step_ms']:.1f} ms/step, {clips_per_s:.1f} clips/s, "
                f"{achieved / 1e12:.3g} TFLOP/s"
            )
        if len(results) == 2:
            results[0]["vs_peer"] = results[0]["clips_per_s"] / results[1]["clips_per_s"]
        if cuda and rung in MAX_BATCH_RUNGS:
            results[0]["max_micro_batch"] = max_micro_batch(cfg, device, precision)
        rows += results
    return rows
