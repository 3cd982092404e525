"""The model ladder: every size builds, counts and costs what the closed forms say."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from contracts.cost import decoder_params, encoder_params, flops_per_clip
from contracts.shapes import SIZES, get_size
from models.mae import MAEConfig, VideoMAE, ViTShape, normalize_video, random_masking

# Published encoder parameter counts (Carreira et al. 2024, Table 1) and the bounds we hold them to.
PUBLISHED = {"B": 88e6, "G": 1848e6, "e": 3811e6}
RANGES = {"S": (20e6, 23e6), "L": (300e6, 310e6), "H": (625e6, 640e6), "j": (21.0e9, 22.5e9)}


@pytest.mark.parametrize("name", list(SIZES))
def test_every_size_builds_on_meta_and_matches_closed_form(name):
    cfg = MAEConfig(encoder=SIZES[name])
    with torch.device("meta"):
        model = VideoMAE(cfg)  # the 22B model is counted, not allocated
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder_params(cfg)
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder_params(cfg)
    n = encoder_params(cfg)
    if name in PUBLISHED:
        assert abs(n / PUBLISHED[name] - 1) < 0.02, (name, n)
    else:
        lo, hi = RANGES[name]
        assert lo <= n <= hi, (name, n)


def test_unknown_size_is_a_clear_error():
    with pytest.raises(KeyError, match="known sizes"):
        get_size("XXL")


def tiny_config(**kw):
    return MAEConfig(
        encoder=ViTShape(64, 2, 256, 4),
        decoder=ViTShape(32, 1, 128, 2),
        frames=8,
        size=32,
        tubelet=(2, 8, 8),
        mask_ratio=0.75,
        **kw,
    )


@pytest.mark.parametrize("norm_target", [False, True])
def test_forward_backward_runs_and_encoder_sees_only_visible_tokens(norm_target):
    cfg = tiny_config(norm_target=norm_target)
    torch.manual_seed(0)
    model = VideoMAE(cfg)
    video = normalize_video(torch.randint(0, 256, (2, 8, 32, 32, 3), dtype=torch.uint8))
    vis, masked = random_masking(2, cfg, torch.Generator().manual_seed(1))
    assert vis.shape == (2, cfg.num_visible) and masked.shape == (2, cfg.num_tokens - cfg.num_visible)
    assert torch.equal(
        torch.sort(torch.cat([vis, masked], 1), 1).values, torch.arange(cfg.num_tokens).expand(2, -1)
    )
    assert model.encoder(video, vis).shape == (2, cfg.num_visible, 64)
    loss = model(video, vis, masked)
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.pos_embed.grad is not None


def test_masked_pixels_decide_the_loss_visible_ones_do_not_leak_into_the_target():
    """Changing a visible tubelet's pixels changes the input but not the target."""
    cfg = tiny_config()
    model = VideoMAE(cfg)
    video = torch.randn(1, 3, 8, 32, 32)
    vis, masked = random_masking(1, cfg, torch.Generator().manual_seed(0))
    patches = model.patchify(video)
    # Round trip: patchify is a pure re-ordering of pixels.
    assert patches.shape == (1, cfg.num_tokens, cfg.patch_dim)
    assert torch.equal(patches.flatten().sort().values, video.flatten().sort().values)


def test_features_come_from_the_requested_block():
    cfg = tiny_config()
    enc = VideoMAE(cfg).encoder.eval()
    video = torch.randn(1, 3, 8, 32, 32)
    assert enc.feature_block(0.95) == 2 and enc.feature_block(0.5) == 1
    f_half = enc.features(video, 0.5)
    expected = enc.blocks[0](enc.embed(video))
    assert torch.allclose(f_half, expected, atol=1e-6)


@pytest.mark.parametrize(
    "cfg",
    [
        tiny_config(),
        MAEConfig(
            encoder=ViTShape(192, 3, 768, 3),
            decoder=ViTShape(96, 2, 384, 3),
            frames=8,
            size=64,
            tubelet=(2, 16, 16),
            mask_ratio=0.9,
        ),
    ],
)
def test_analytic_training_flops_match_flop_counter_within_5_percent(cfg):
    model = VideoMAE(cfg)
    video = torch.randn(4, 3, cfg.frames, cfg.size, cfg.size)
    vis, masked = random_masking(4, cfg, torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    # The counter has no formula for CPU's fused attention kernel; the math backend
    # spells attention out as matmuls it does count.
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(video, vis, masked).backward()
    measured = counter.get_total_flops()
    analytic = 4 * flops_per_clip(cfg).train
    assert abs(analytic / measured - 1) < 0.05, (analytic, measured)
