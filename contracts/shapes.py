"""Model shapes: the video MAE's config and the named encoder sizes of the 4DS ladder.

Pure data, no torch: the spec, `sweep plan` and the cost model read shapes without
building a model. `models.mae` builds the modules from an `MAEConfig`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ViTShape:
    width: int
    depth: int
    mlp: int
    heads: int


@dataclass(frozen=True)
class MupBase:
    """The shapes μP scales from (Yang et al., "Tensor Programs V"): the base rung's encoder and
    decoder. At the base shapes a μP model is the standard one; wider ones scale their hidden
    matrices' Adam LR by base fan-in / fan-in, the decoder head's input by base / width, and
    attention logits by sqrt(base head dim) / head dim (1/d rather than 1/sqrt(d))."""

    encoder: ViTShape
    decoder: ViTShape


@dataclass(frozen=True)
class MAEConfig:
    encoder: ViTShape
    decoder: ViTShape = field(default_factory=lambda: ViTShape(384, 4, 1536, 6))
    frames: int = 16
    size: int = 224
    tubelet: tuple[int, int, int] = (2, 16, 16)  # (t, h, w)
    channels: int = 3
    mask_ratio: float = 0.95
    norm_target: bool = False
    mup: MupBase | None = None  # None: standard parametrisation
    # Numerics of an imported Flax ViT (models.fourds): LayerNorm epsilon and GELU form ("tanh" is
    # Flax's default approximation). Left out of to_dict at these defaults, so rung hashes keep.
    ln_eps: float = 1e-5
    gelu: str = "none"  # torch.nn.GELU's `approximate`: "none" (exact erf) or "tanh"

    @property
    def grid(self) -> tuple[int, int, int]:
        t, h, w = self.tubelet
        return (self.frames // t, self.size // h, self.size // w)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def num_visible(self) -> int:
        # At least one token stays visible, whatever the ratio.
        return max(1, round(self.num_tokens * (1.0 - self.mask_ratio)))

    @property
    def patch_dim(self) -> int:
        return math.prod(self.tubelet) * self.channels

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.mup is None:  # standard parametrisation keeps the dict (and so rung hashes) it always had
            del d["mup"]
        for k, default in (("ln_eps", 1e-5), ("gelu", "none")):
            if d[k] == default:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MAEConfig:
        d = dict(d)
        d["encoder"] = ViTShape(**d["encoder"])
        d["decoder"] = ViTShape(**d["decoder"])
        d["tubelet"] = tuple(d["tubelet"])
        if d.get("mup") is not None:
            d["mup"] = MupBase(ViTShape(**d["mup"]["encoder"]), ViTShape(**d["mup"]["decoder"]))
        return cls(**d)


# The 4DS encoder ladder (Carreira et al. 2024, "Scaling 4D Representations"): published
# widths, depths, MLP sizes and heads; parameter counts as the paper reports them.
SIZES: dict[str, ViTShape] = {
    "S": ViTShape(width=384, depth=12, mlp=1536, heads=6),  # ~20M
    "B": ViTShape(width=768, depth=12, mlp=3072, heads=12),  # 88M
    "L": ViTShape(width=1024, depth=24, mlp=4096, heads=16),  # ~300M
    "H": ViTShape(width=1280, depth=32, mlp=5120, heads=16),  # ~630M
    "G": ViTShape(width=1664, depth=48, mlp=8192, heads=16),  # 1,848M
    "e": ViTShape(width=1792, depth=56, mlp=15360, heads=16),  # 3,811M
    # j's shape is not published; a ViT-22B-like shape gives ~21.7B.
    "j": ViTShape(width=6144, depth=48, mlp=24576, heads=48),  # 21,495M reported
}


def get_size(name: str) -> ViTShape:
    try:
        return SIZES[name]
    except KeyError:
        raise KeyError(f"unknown size {name!r}; known sizes: {', '.join(SIZES)}") from None
