"""The consolidated encoder export that evals read: safetensors weights plus the
rung's resolved config as JSON (`RungConfig.to_dict()`: "model" holds the MAEConfig).
No pickles. Where it lives in a checkpoint: contracts.layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from contracts.errors import UserError
from contracts.layout import CONFIG, EXPORT, WEIGHTS
from contracts.shapes import MAEConfig
from models.mae import Encoder


class ExportError(UserError):
    """A missing or unreadable export; the CLI turns it into exit code 2."""


def save_encoder(state: dict[str, torch.Tensor], rung: dict, out_dir: Path) -> None:
    """`state` holds encoder weights keyed as in `Encoder.state_dict()`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out_dir / WEIGHTS))
    (out_dir / CONFIG).write_text(json.dumps(rung, indent=2, sort_keys=True))


def export_dir(path: str | Path) -> Path:
    """Accept a checkpoint dir or its export dir."""
    path = Path(path)
    if (path / EXPORT / WEIGHTS).is_file():
        return path / EXPORT
    return path


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """Load an exported encoder (checkpoint dir or export dir) -> (Encoder in eval mode, rung dict)."""
    d = export_dir(path)
    if not (d / WEIGHTS).is_file() or not (d / CONFIG).is_file():
        raise ExportError(f"{path}: no encoder export here (expected {WEIGHTS} and {CONFIG})")
    try:
        rung = json.loads((d / CONFIG).read_text())
        cfg = MAEConfig.from_dict(rung["model"])
        state = load_file(str(d / WEIGHTS), device=str(device))
    except Exception as e:  # corrupt JSON or safetensors: say which file
        raise ExportError(f"{d}: corrupt encoder export ({e.__class__.__name__}: {e})") from None
    enc = Encoder(cfg)
    missing, unexpected = enc.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(
            f"{d}: export does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return enc.to(device).eval(), rung
