"""The reference-model adapter (models.backbones) against transformers' own forward, for a tiny
random-initialised model of every family, saved with save_pretrained (no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.backbones import fourds_layer, load_hf, resize_time

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5,) * 3, (0.5,) * 3)

# family -> (model class, config, prefix tokens, pixel mean/std, video?)
FAMILIES = {
    "videomae": (
        "VideoMAEModel",
        transformers.VideoMAEConfig(
            image_size=32, patch_size=8, num_frames=4, tubelet_size=2, intermediate_size=64, **SMALL
        ),
        0,
        IMAGENET,
        True,
    ),
    "vjepa2": (
        "VJEPA2Model",
        transformers.VJEPA2Config(
            crop_size=32,
            patch_size=8,
            frames_per_clip=4,
            tubelet_size=2,
            mlp_ratio=2.0,
            pred_hidden_size=16,
            pred_num_hidden_layers=1,
            pred_num_attention_heads=2,
            **SMALL,
        ),
        0,
        IMAGENET,
        True,
    ),
    "dinov2": (
        "Dinov2Model",
        transformers.Dinov2Config(image_size=32, patch_size=8, mlp_ratio=2, **SMALL),
        1,
        IMAGENET,
        False,
    ),
    "dinov2_registers": (
        "Dinov2WithRegistersModel",
        transformers.Dinov2WithRegistersConfig(
            image_size=32, patch_size=8, mlp_ratio=2, num_register_tokens=4, **SMALL
        ),
        5,
        IMAGENET,
        False,
    ),
    "siglip": (
        "SiglipVisionModel",
        transformers.SiglipVisionConfig(image_size=32, patch_size=8, intermediate_size=64, **SMALL),
        0,
        HALF,
        False,
    ),
    "clip": (
        "CLIPVisionModel",
        transformers.CLIPVisionConfig(image_size=32, patch_size=8, intermediate_size=64, **SMALL),
        1,
        CLIP,
        False,
    ),
    "dinov3": (
        "DINOv3ViTModel",
        transformers.DINOv3ViTConfig(
            image_size=32, patch_size=8, intermediate_size=64, num_register_tokens=4, **SMALL
        ),
        5,
        IMAGENET,
        False,
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_adapter_features_equal_transformers_hidden_states(family, tmp_path):
    cls_name, config, prefix, (mean, std), video = FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config).eval()
    model.save_pretrained(tmp_path)
    clip = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)

    backbone = load_hf(str(tmp_path), fraction=0.95)
    t = 2 if video else 4  # token time steps: tubelet 2 for the video models, one per frame for images
    got = backbone.features(clip, readout_frames=t)  # the same number of steps: no time resize

    # transformers' own forward on the same pixels, normalised by hand with the family's constants
    x = torch.from_numpy(clip).permute(0, 1, 4, 2, 3).float() / 255.0  # (B, T, 3, 32, 32)
    x = (x - torch.tensor(mean).view(1, 1, 3, 1, 1)) / torch.tensor(std).view(1, 1, 3, 1, 1)
    with torch.no_grad():
        if family == "vjepa2":
            hs = model(pixel_values_videos=x, skip_predictor=True, output_hidden_states=True).hidden_states
        elif video:
            hs = model(pixel_values=x, output_hidden_states=True).hidden_states
        else:
            hs = model(pixel_values=x.flatten(0, 1), output_hidden_states=True).hidden_states
    assert len(hs) == 5  # embeddings + 4 blocks
    # 4DS's rule at 0.95 with L = 4: entry int(5 * 0.95) - 1 = 3 of [emb, emb, b1, b2, b3] = block 2
    want = hs[2][:, prefix:].reshape(2, -1, 32)
    assert backbone.layer == "block 2 of 4"
    assert got.shape == (2, t * 16, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert backbone.num_params > 0 and (family != "vjepa2" or backbone.num_params < model.num_parameters())


def test_layer_rule_matches_4ds_for_b_and_l():
    assert fourds_layer(12, 0.95) == 10  # ViT-B: output of block 10 of 12
    assert fourds_layer(24, 0.95) == 21  # ViT-L: output of block 21 of 24


def test_time_resize_is_cubic_and_keeps_equal_lengths():
    x = torch.randn(1, 4, 3, 2)
    assert torch.equal(resize_time(x, 4), x)
    ramp = torch.arange(4.0).view(1, 4, 1, 1)
    up = resize_time(ramp, 8)[0, :, 0, 0]
    # half-pixel centres: output 3 sits at input 1.25, where all four cubic taps lie inside the input
    # and Keys' kernel reproduces a straight line exactly
    assert up[3].item() == pytest.approx(1.25, abs=1e-6)
    assert torch.allclose(resize_time(torch.ones(1, 6, 1, 1), 4), torch.ones(1, 4, 1, 1))


def test_model_own_preprocessing_is_read_from_its_preprocessor_config(tmp_path):
    _, config, _, _, _ = FAMILIES[
        "dinov2"
    ]  # config image_size 32; its processor crops 16 (as DINOv2's: 518 vs 224)
    transformers.Dinov2Model(config).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        '{"do_center_crop": true, "crop_size": {"height": 16, "width": 16}, "size": {"shortest_edge": 20},'
        ' "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}'
    )
    backbone = load_hf(str(tmp_path))
    assert backbone.size == 16 and backbone.geometry.grid[1:] == (2, 2)
    assert backbone.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert backbone.std.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
    clip = np.zeros((1, 4, 32, 32, 3), dtype=np.uint8)
    assert backbone.features(clip, readout_frames=2).shape == (1, 2 * 4, 32)
