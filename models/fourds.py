"""Import a released 4DS encoder (google-deepmind/representations4d: 4DS-B-dist-e, 4DS-e) into our export.

The checkpoints are NumPy `.npz` files of a Flax parameter tree flattened with "/"
(`utils/checkpoint_utils.recover_tree`). The backbone is `models/model.py`'s `Model`:
`encoder` = `Tokenizer(PatchEmbedding (an nn.Conv, "Conv_0"), posenc = kauldron LearnedEmbedding
over the (t, h, w) token axes)`, `processor` = `GeneralizedTransformer` of kauldron `PreNormBlock`s
`layers_<i>` with `attention_norm`, `attention` (ImprovedMultiHeadDotProductAttention: DenseGeneral
`query`/`key`/`value` (D, heads, D/heads) and `out` (heads, D/heads, D)), `mlp_norm`, `mlp`
(TransformerMLP: `dense_in`, `dense_out`). Keys below are relative to the prefix in front of
`encoder/patch_embedding/Conv_0/kernel` (e.g. "params/", or "params/layers_0/" in a checkpoint
saved with a readout); every one of them is required and shape-checked.

How it maps onto models.mae.Encoder, and what differs structurally:
- Conv kernel (kt, kh, kw, C, D) -> patch_embed (D, C, kt, kh, kw). 4DS feeds frames in [0, 1],
  we feed [-1, 1]: the importer folds x01 = (x + 1) / 2 into the conv (weight / 2, bias + sum / 2).
- Position embedding (t, h, w, D) -> pos_embed (1, t*h*w, D): the same (t, h, w) raster order.
- q, k, v kernels are packed into our one `qkv` Linear (rows q | k | v, each head-major); `out` -> proj.
- Flax's LayerNorm epsilon is 1e-6 and its GELU the tanh approximation: the export's config says so
  (MAEConfig.ln_eps / gelu), so our blocks compute what theirs do.
- 4DS has no final norm (features are raw block outputs, as ours): our `norm` is set to identity.
- 4DS's readout reads `aux[int(0.95 * (L + 1)) - 1]` of [tokens, tokens, block 1, ..., block L-1]
  (block 10 of 12 for B); ours reads block round(0.95 * L) (11 of 12): set evals.readout.depth_fraction
  (e.g. 10/12) to read the same block.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from contracts.shapes import SIZES, MAEConfig
from models.export import ExportError, save_encoder
from models.mae import Encoder

IMPORTABLE = ("B", "e")  # the released backbones: 4DS-B-dist-e (88M) and 4DS-e (3.8B)
CONV = "encoder/patch_embedding/Conv_0/"


def expected_shapes(
    width: int, depth: int, mlp: int, heads: int, tubelet=(2, 16, 16), grid=(8, 14, 14), channels: int = 3
) -> dict[str, tuple[int, ...]]:
    """Every key of a 4DS backbone checkpoint (after its prefix) and its shape."""
    hd = width // heads
    out = {
        CONV + "kernel": (*tubelet, channels, width),
        CONV + "bias": (width,),
        "encoder/posenc/embeddings": (*grid, width),
    }
    for i in range(depth):
        p = f"processor/layers_{i}/"
        for norm in ("attention_norm", "mlp_norm"):
            out |= {f"{p}{norm}/scale": (width,), f"{p}{norm}/bias": (width,)}
        for name in ("query", "key", "value"):
            out |= {
                f"{p}attention/{name}/kernel": (width, heads, hd),
                f"{p}attention/{name}/bias": (heads, hd),
            }
        out |= {
            f"{p}attention/out/kernel": (heads, hd, width),
            f"{p}attention/out/bias": (width,),
            f"{p}mlp/dense_in/kernel": (width, mlp),
            f"{p}mlp/dense_in/bias": (mlp,),
            f"{p}mlp/dense_out/kernel": (mlp, width),
            f"{p}mlp/dense_out/bias": (width,),
        }
    return out


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ExportError(f"{path}: cannot read the checkpoint as .npz ({e})") from None


def convert(
    params: dict[str, np.ndarray], size: str, path: Path | str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], MAEConfig]:
    """4DS parameters (flat "/" keys) -> (our Encoder state dict, its MAEConfig); ExportError naming
    the key."""
    if size not in IMPORTABLE:
        raise ExportError(f"--size {size!r}: the released 4DS backbones are sizes {', '.join(IMPORTABLE)}")
    shape = SIZES[size]
    conv = next((k for k in params if k.endswith(CONV + "kernel")), None)
    if conv is None:
        raise ExportError(f"{path}: missing key {CONV}kernel (not a 4DS backbone checkpoint)")
    prefix = conv[: -len(CONV + "kernel")]
    p = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    kt, kh, kw, C, _ = p[CONV + "kernel"].shape
    grid = p.get("encoder/posenc/embeddings", np.zeros((1, 1, 1))).shape[:3]
    want = expected_shapes(shape.width, shape.depth, shape.mlp, shape.heads, (kt, kh, kw), grid, C)
    for k, s in want.items():
        if k not in p:
            raise ExportError(f"{path}: missing key {prefix}{k} (a 4DS-{size} checkpoint has it, shape {s})")
        if tuple(p[k].shape) != s:
            raise ExportError(
                f"{path}: key {prefix}{k} has shape {tuple(p[k].shape)}, 4DS-{size} needs {s}; wrong --size?"
            )
    extra = sorted(k for k in p if k not in want and k.startswith(("encoder/", "processor/")))
    if extra:
        raise ExportError(
            f"{path}: unexpected key {prefix}{extra[0]}: not the plain 4DS ViT this importer maps"
        )
    cfg = MAEConfig(
        encoder=shape,
        frames=grid[0] * kt,
        size=grid[1] * kh,
        tubelet=(kt, kh, kw),
        channels=C,
        ln_eps=1e-6,
        gelu="tanh",
    )
    D = shape.width
    f = {k: np.asarray(v, np.float32) for k, v in p.items() if k in want}
    w = f[CONV + "kernel"].transpose(4, 3, 0, 1, 2)  # (D, C, kt, kh, kw)
    state = {
        "patch_embed.weight": w / 2,
        "patch_embed.bias": f[CONV + "bias"] + w.sum((1, 2, 3, 4)) / 2,
        "pos_embed": f["encoder/posenc/embeddings"].reshape(1, -1, D),
        "norm.weight": np.ones(D),
        "norm.bias": np.zeros(D),
    }
    for i in range(shape.depth):
        a, o = f"processor/layers_{i}/", f"blocks.{i}."
        att = a + "attention/"
        state |= {
            o + "norm1.weight": f[a + "attention_norm/scale"],
            o + "norm1.bias": f[a + "attention_norm/bias"],
            o + "norm2.weight": f[a + "mlp_norm/scale"],
            o + "norm2.bias": f[a + "mlp_norm/bias"],
            o + "attn.qkv.weight": np.concatenate(
                [f[f"{att}{n}/kernel"].reshape(D, D).T for n in ("query", "key", "value")]
            ),
            o + "attn.qkv.bias": np.concatenate(
                [f[f"{att}{n}/bias"].reshape(D) for n in ("query", "key", "value")]
            ),
            o + "attn.proj.weight": f[att + "out/kernel"].reshape(D, D).T,
            o + "attn.proj.bias": f[att + "out/bias"],
            o + "mlp.0.weight": f[a + "mlp/dense_in/kernel"].T,
            o + "mlp.0.bias": f[a + "mlp/dense_in/bias"],
            o + "mlp.2.weight": f[a + "mlp/dense_out/kernel"].T,
            o + "mlp.2.bias": f[a + "mlp/dense_out/bias"],
        }
    return {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in state.items()}, cfg


def import_4ds(path: str | Path, size: str, out_dir: str | Path) -> dict:
    """Check and convert a 4DS `.npz`, then write our export (encoder.safetensors + rung.json) to out_dir."""
    path, out_dir = Path(path), Path(out_dir)
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint file")
    state, cfg = convert(read_npz(path), size, path)
    with torch.device("meta"):  # every name and shape against our Encoder, without allocating 3.8B parameters
        Encoder(cfg).load_state_dict(state, strict=True, assign=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    rung = {
        "name": f"4ds_{size}",
        "model": cfg.to_dict(),
        "imported": {
            "from": "google-deepmind/representations4d",
            "file": str(path),
            "sha256": digest,
            "size": size,
            "input": "frames in [0, 1] folded into patch_embed",
        },
    }
    save_encoder(state, rung, out_dir)
    return rung
