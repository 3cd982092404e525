"""Importing a released 4DS backbone: an .npz with the public checkpoint's key names and 4DS-B shapes
(random values, full depth and size), checked against a NumPy forward pass of the Flax model's maths."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.export import load_encoder
from models.fourds import expected_shapes
from models.mae import normalize_video
from orchestrator.cli import app

runner = CliRunner()
PREFIX = "params/"  # the Flax variables collection, as recover_tree(npload(...)) hands it to Model.apply
B = dict(width=768, depth=12, mlp=3072, heads=12)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    params = {}
    for k, shape in expected_shapes(**B).items():
        scale = 1.0 if k.endswith("norm/scale") else 0.02
        params[PREFIX + k] = (
            (scale + 0.02 * rng.standard_normal(shape, np.float32))
            if scale == 1.0
            else (scale * rng.standard_normal(shape, np.float32))
        )
    path = tmp_path_factory.mktemp("4ds") / "scaling4d_dist_b.npz"
    np.savez(path, **params)
    return path, params


def layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def gelu_tanh(x):  # flax.linen.gelu's default (approximate=True)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def reference_features(p, video, blocks):
    """The 4DS Model in NumPy (float64): frames in [0, 1], VALID conv tubelets, learned posenc over
    (t, h, w), pre-norm blocks; the output of `blocks` blocks, tokens in (t, h, w) order."""
    g = {k[len(PREFIX) :]: v.astype(np.float64) for k, v in p.items()}
    x = video.astype(np.float64) / 255.0  # (T, H, W, 3)
    K = g["encoder/patch_embedding/Conv_0/kernel"]  # (2, 16, 16, 3, D)
    T, H, W, _ = x.shape
    patches = x.reshape(T // 2, 2, H // 16, 16, W // 16, 16, 3)
    tok = (
        np.einsum("aibjckl,ijkld->abcd", patches, K, optimize=True) + g["encoder/patch_embedding/Conv_0/bias"]
    )
    tok = (tok + g["encoder/posenc/embeddings"]).reshape(-1, K.shape[-1])
    for i in range(blocks):
        a = f"processor/layers_{i}/"
        h = layer_norm(tok, g[a + "attention_norm/scale"], g[a + "attention_norm/bias"])
        q, k, v = (
            np.einsum("nd,dhe->nhe", h, g[f"{a}attention/{n}/kernel"]) + g[f"{a}attention/{n}/bias"]
            for n in ("query", "key", "value")
        )
        logits = np.einsum("qhd,khd->hqk", q / np.sqrt(q.shape[-1]), k)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", w, v)
        tok = tok + np.einsum("qhd,hdo->qo", att, g[a + "attention/out/kernel"]) + g[a + "attention/out/bias"]
        h = layer_norm(tok, g[a + "mlp_norm/scale"], g[a + "mlp_norm/bias"])
        h = gelu_tanh(h @ g[a + "mlp/dense_in/kernel"] + g[a + "mlp/dense_in/bias"])
        tok = tok + h @ g[a + "mlp/dense_out/kernel"] + g[a + "mlp/dense_out/bias"]
    return tok


def test_import_4ds_b_matches_a_numpy_forward_pass(npz, tmp_path):
    path, params = npz
    out = tmp_path / "4ds_B"
    result = runner.invoke(app, ["import-4ds", str(path), "--size", "B", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rung = json.loads((out / "rung.json").read_text())
    assert rung["imported"]["size"] == "B" and rung["model"]["gelu"] == "tanh"
    enc, _ = load_encoder(out)
    cfg = enc.cfg
    assert (cfg.frames, cfg.size, cfg.tubelet, cfg.encoder.width, len(enc.blocks)) == (
        16,
        224,
        (2, 16, 16),
        768,
        12,
    )
    assert sum(p.numel() for n, p in enc.named_parameters() if not n.startswith("norm.")) == sum(
        v.size for v in params.values()
    )
    video = np.random.default_rng(1).integers(0, 256, (1, 16, 224, 224, 3), dtype=np.uint8)
    torch.set_num_threads(2)
    blocks = 2  # two of the twelve blocks keep the float64 reference fast; every block was shape-checked
    ours = (
        enc.features(normalize_video(torch.from_numpy(video)), depth_fraction=blocks / 12)[0].double().numpy()
    )
    ref = reference_features(params, video[0], blocks)
    assert ours.shape == ref.shape == (8 * 14 * 14, 768)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() > 0.1  # not a trivially small comparison


def test_wrong_size_or_missing_key_exits_2_naming_the_key(npz, tmp_path):
    path, params = npz
    result = runner.invoke(app, ["import-4ds", str(path), "--size", "e", "--out", str(tmp_path / "e")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "params/encoder/patch_embedding/Conv_0/kernel has shape" in text, text
    assert "(2, 16, 16, 3, 1792)" in text
    partial = tmp_path / "partial.npz"
    np.savez(
        partial,
        **{k: v for k, v in params.items() if "layers_3/mlp_norm/bias" not in k and "layers_1" not in k},
    )
    result = runner.invoke(app, ["import-4ds", str(partial), "--size", "B", "--out", str(tmp_path / "b")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "missing key params/processor/layers_1/attention_norm/scale" in text, (
        text
    )
    result = runner.invoke(app, ["import-4ds", str(path), "--size", "L", "--out", str(tmp_path / "l")])
    assert result.exit_code == 2 and "sizes B, e" in result.output
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    result = runner.invoke(
        app, ["import-4ds", str(tmp_path / "junk.npz"), "--size", "B", "--out", str(tmp_path / "j")]
    )
    assert result.exit_code == 2 and "cannot read the checkpoint" in result.output
    assert not any((tmp_path / d).exists() for d in ("e", "b", "l", "j"))
