"""`sweep bench`: runs on CPU with the GPU table's columns, and its fast path computes the plain path's
loss."""

import io
import sys

import pytest
import torch
from rich.console import Console
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from contracts.cost import flops_per_clip
from contracts.spec import SpecError
from models.mae import VideoMAE
from orchestrator.bench import (
    COLUMNS,
    Batch,
    bench_config,
    doubling_search,
    make_step,
    ours_loss,
    peer_loss,
    peer_model,
    run_bench,
    stage_batches,
)
from orchestrator.bench_table import HEADERS, print_table

CPU = torch.device("cpu")


@pytest.fixture
def one_thread():
    # The test CPU is shared: one thread keeps the tiny model's steps fast and steady.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_bench_on_cpu_has_the_gpu_columns(one_thread):
    lines = []
    rows = run_bench(tiny=True, peer=False, device="cpu", log=lines.append)
    assert [(r["rung"], r["impl"]) for r in rows] == [("tiny", "sweep4d")]
    r = rows[0]
    assert set(r) == set(COLUMNS)
    assert r["clips_per_s"] > 0 and r["tokens_per_s"] > 0 and r["tflops"] > 0
    cfg = bench_config("tiny", tiny=True)
    assert r["clips_per_s"] == pytest.approx(r["batch"] / (r["step_ms"] / 1e3))
    assert r["tokens_per_s"] == pytest.approx(r["clips_per_s"] * cfg.num_tokens)
    assert r["tflops"] == pytest.approx(r["clips_per_s"] * flops_per_clip(cfg).train / 1e12)
    assert r["params"] == sum(p.numel() for p in VideoMAE(cfg).parameters())
    # What only a GPU can measure is None on CPU, never a made-up number.
    for key in ("mfu", "mfu_datasheet", "peak_mem_gib", "max_micro_batch", "vs_peer", "peak_tflops_measured"):
        assert r[key] is None, key

    buf = io.StringIO()
    print_table(rows, Console(file=buf, width=200))
    text = buf.getvalue()
    for h in HEADERS:
        assert h in text, h
    assert "n/a on CPU" in text and "tiny" in text


def test_unknown_rung_is_a_user_error_before_any_work():
    with pytest.raises(SpecError, match="unknown rung 'XXL'.*known: tiny, S, B"):
        run_bench(rungs=["S", "XXL"], peer=False, device="cpu", log=None)


def test_missing_transformers_skips_the_peer_with_a_clear_line(one_thread, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    lines = []
    rows = run_bench(tiny=True, peer=True, device="cpu", steps=1, warmup=1, repeats=1, log=lines.append)
    assert [r["impl"] for r in rows] == ["sweep4d"]
    assert any("peer skipped" in line and "transformers" in line for line in lines), lines


def test_doubling_search_finds_the_largest_power_of_two_multiple_that_fits():
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 100  # "memory" for 100 clips

    assert doubling_search(fits, start=8, limit=4096) == 64
    assert tried == [8, 16, 32, 64, 128]  # stops at the first failure
    assert doubling_search(lambda b: True, start=8, limit=40) == 32  # never past the limit
    assert doubling_search(lambda b: False, start=8) is None  # even the first does not fit


def test_max_micro_batch_is_none_on_cpu():
    from orchestrator.bench import max_micro_batch

    assert max_micro_batch(bench_config("tiny", tiny=True), CPU, "fp32") is None


def test_a_failing_peer_costs_no_rows_of_ours(one_thread, monkeypatch):
    import orchestrator.bench as bench

    class FakeTransformers:
        __version__ = "0.fake"

    def broken(cfg):
        raise RuntimeError("peer config changed")

    monkeypatch.setitem(sys.modules, "transformers", FakeTransformers)
    monkeypatch.setattr(bench, "peer_model", broken)
    lines = []
    rows = run_bench(tiny=True, peer=True, device="cpu", steps=1, warmup=1, repeats=1, log=lines.append)
    assert [r["impl"] for r in rows] == ["sweep4d"] and rows[0]["vs_peer"] is None
    assert any("peer failed" in line and "peer config changed" in line for line in lines), lines


PROBES = (
    "encoder.patch_embed.weight",
    "encoder.blocks.0.attn.qkv.weight",
    "encoder.blocks.1.mlp.2.weight",
    "decoder.blocks.0.attn.proj.weight",
    "decoder.head.weight",
)


def _loss_and_grads(model, b: Batch, precision: str):
    model.zero_grad(set_to_none=True)
    dtypes = []
    hook = model.encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    loss = ours_loss(model, b, precision)
    hook.remove()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if n in PROBES}
    return loss.item(), grads, dtypes[0]


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_fast_path_gives_the_plain_paths_loss_and_gradients(one_thread):
    # Plain: fp32, eager, the reference (math) attention. Fast: bf16 autocast, default SDPA kernel.
    # torch.compile is not tested here: compiling even the tiny model takes ~1 min on this CPU;
    # the GPU check in docs/performance.md runs `sweep bench --compile`.
    cfg = bench_config("tiny", tiny=True)
    torch.manual_seed(0)
    model = VideoMAE(cfg)
    b, other = stage_batches(cfg, 4, CPU)
    with sdpa_kernel(SDPBackend.MATH):
        plain_loss, plain, plain_dtype = _loss_and_grads(model, b, "fp32")
    fast_loss, fast, fast_dtype = _loss_and_grads(model, b, "bf16")
    assert (plain_dtype, fast_dtype) == (torch.float32, torch.bfloat16)  # the fast path really ran in bf16

    assert fast_loss == pytest.approx(plain_loss, rel=2e-2)
    for name in PROBES:
        assert _rel_err(fast[name], plain[name]) < 5e-2, name

    # The tolerance can tell a wrong computation apart: the same clips with other masks
    # (a step that mixed up masks between clips, say) give gradients well outside it.
    swapped = Batch(b.video, other.visible, other.masked, other.bool_masked)
    _, wrong, _ = _loss_and_grads(model, swapped, "bf16")
    assert max(_rel_err(wrong[n], plain[n]) for n in PROBES) > 0.2


def test_step_updates_the_weights_and_clears_the_grads(one_thread):
    cfg = bench_config("tiny", tiny=True)
    torch.manual_seed(0)
    model = VideoMAE(cfg)
    before = model.decoder.head.weight.detach().clone()
    step = make_step(model, ours_loss, "fp32", CPU)
    loss = step(stage_batches(cfg, 2, CPU, count=1)[0])
    assert torch.isfinite(loss) and not loss.requires_grad
    assert not torch.equal(model.decoder.head.weight, before)
    assert all(p.grad is None for p in model.parameters())


# -------------------------------------------------------- the peer (only where transformers is installed)


def test_peer_costs_the_same_flops_per_clip_as_ours(one_thread):
    import transformers  # noqa: F401  (a dev dependency: the peer must be testable)

    cfg = bench_config("tiny", tiny=True)
    b = stage_batches(cfg, 2, CPU, count=1)[0]
    counts = []
    for model, loss_fn in ((VideoMAE(cfg), ours_loss), (peer_model(cfg), peer_loss)):
        # The math kernel: FlopCounterMode counts its matmuls, whatever SDPA would pick.
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            loss_fn(model, b, "fp32")
        counts.append(fc.get_total_flops())
    f = flops_per_clip(cfg)
    assert counts[0] == 2 * (f.encoder_forward + f.decoder_forward + f.embed_forward)
    assert counts[1] == pytest.approx(counts[0], rel=1e-3)


def test_bench_with_the_peer_reports_our_ratio(one_thread):
    import transformers  # noqa: F401  (a dev dependency: the peer must be testable)

    rows = run_bench(tiny=True, peer=True, device="cpu", steps=2, warmup=1, repeats=1, log=None)
    ours, peer = rows
    assert (ours["impl"], peer["impl"]) == ("sweep4d", "hf-videomae")
    assert peer["clips_per_s"] > 0 and peer["flops_per_clip"] == ours["flops_per_clip"]
    assert ours["vs_peer"] == pytest.approx(ours["clips_per_s"] / peer["clips_per_s"])
