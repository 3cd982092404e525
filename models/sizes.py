"""The named encoder sizes of the 4DS ladder (shared/REFERENCE-4DS.md).

Each entry is a ViT shape; `get_size` raises a clear error for unknown names.
"""

from __future__ import annotations

from models.mae import ViTShape

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
