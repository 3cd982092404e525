"""Parameter counts as people write them: 20M, 88M, 1.8B, 22B."""

from __future__ import annotations

import math
import re

_SCALES = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def format_size(n: float) -> str:
    """88_000_000 -> '88M', 1.848e9 -> '1.8B', 21.5e9 -> '22B' (two significant digits below 10)."""
    for unit in ("T", "B", "M", "K"):
        v = n / _SCALES[unit]
        if v >= 1:
            return f"{v:.0f}{unit}" if v >= 10 else f"{v:.1f}".rstrip("0").rstrip(".") + unit
    return f"{n:g}"


def parse_size(size: str | float | int) -> float:
    """'22B' -> 22e9, '300M' -> 3e8, '1.5e9' or 1.5e9 -> 1.5e9. ValueError on anything else."""
    if isinstance(size, int | float):
        value = float(size)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KkMmBbGgTt]?)\s*", str(size))
        if not m:
            raise ValueError(f"cannot read {size!r} as a size; write it like 22B, 300M or 88000000")
        value = float(m.group(1)) * _SCALES[m.group(2).upper()]
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"a size must be a positive number, got {size!r}")
    return value
