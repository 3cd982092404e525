"""Reference models: frozen backbones a sweep evaluates beside its ladder, never trains (issue 25).

    references:
      - {name: pixels, source: pixels}                         # raw tubelet patches: the floor
      - {name: random-small, source: random, width: 128, depth: 4, mlp: 512, heads: 4}
      - {name: dinov2-b, source: hf, id: facebook/dinov2-base}  # a hub id or a save_pretrained dir
      - {name: 4ds-b, source: fourds, path: scaling4d_dist_b.npz, size: B}
      - {name: other-recipe, source: export, path: runs/other/B-1a2b3c/checkpoints/step_00001000}

Why "reference": the task catalog's `baseline_<metric>` is the trivial predictor of each task (a
constant, the train mean); a reference model is a real encoder read by the same readouts. A second
"baseline" would make `baseline_abs_rel` ambiguous in every table, so these are references.

`Reference` is one validated entry; `ReferenceConfig` the resolved one, whose identity (the entry
and the sweep's clip shape, never trust_remote_code) names its run directory `references/<name>-<hash6>`
(contracts.layout.ReferencePaths), as a rung's identity names its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.shapes import SIZES, ViTShape

SOURCES = ("hf", "fourds", "export", "pixels", "random")
FOURDS_SIZES = ("B", "e")  # the released 4DS backbones (models.fourds.IMPORTABLE)
PosInt = Annotated[int, Field(gt=0)]
RGB = tuple[float, float, float]


class Reference(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    source: Literal[SOURCES]  # type: ignore[valid-type]
    id: str | None = None  # hf: a transformers model id or a directory saved with save_pretrained
    path: str | None = None  # fourds: the .npz; export: a checkpoint or export directory
    size: str | None = None  # fourds: B or e; random: a named size (contracts.shapes.SIZES)
    width: PosInt | None = None  # random: an explicit shape instead of a size
    depth: PosInt | None = None
    mlp: PosInt | None = None
    heads: PosInt | None = None
    # The block whose output is read (0: the embeddings). Default: 4DS's rule at the readout's
    # depth_fraction for hf and fourds, our own rule (models.mae.Encoder.feature_block) for
    # export and random, so they are read as the ladder's rungs are.
    layer: Annotated[int, Field(ge=0)] | None = None
    frames: PosInt | None = None  # hf: input frames (default: the model's own; image models: the clip's)
    resolution: PosInt | None = None  # hf: input side in pixels (default: the model's own)
    mean: RGB | None = None  # hf: pixel normalisation (default: the model's own)
    std: RGB | None = None
    trust_remote_code: bool = False  # hf: run code shipped with the model (refused unless set)
    seed: int = 0  # random: the initialisation's seed

    @property
    def shape(self) -> ViTShape | None:
        """random's encoder shape."""
        if self.size in SIZES:
            return SIZES[self.size]
        if None in (self.width, self.depth, self.mlp, self.heads):
            return None
        return ViTShape(self.width, self.depth, self.mlp, self.heads)  # type: ignore[arg-type]


# Which optional fields each source takes (anything else set is an error naming the field).
ALLOWED = {
    "hf": {"id", "layer", "frames", "resolution", "mean", "std", "trust_remote_code"},
    "fourds": {"path", "size", "layer"},
    "export": {"path", "layer"},
    "pixels": set(),
    "random": {"size", "width", "depth", "mlp", "heads", "layer", "seed"},
}
REQUIRED = {"hf": ("id",), "fourds": ("path", "size"), "export": ("path",), "pixels": (), "random": ()}


def check_references(refs: list[Reference], rung_names: list[str]) -> list[tuple[tuple, str]]:
    """Problems across a reference entry's fields, each as (location, message)."""
    out: list[tuple[tuple, str]] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(refs):
        where = ("references", i)
        given = {k for k in r.model_fields_set if k not in ("name", "source")}
        for k in sorted(given - ALLOWED[r.source]):
            out.append((where + (k,), f"source {r.source!r} takes no {k!r}"))
        for k in REQUIRED[r.source]:
            if getattr(r, k) is None:
                out.append((where + (k,), f"source {r.source!r} needs {k!r}"))
        if r.source == "fourds" and r.size is not None and r.size not in FOURDS_SIZES:
            out.append((where + ("size",), f"the released 4DS backbones are sizes {', '.join(FOURDS_SIZES)}"))
        if r.source == "random":
            if r.size is not None and r.size not in SIZES:
                out.append((where + ("size",), f"unknown size {r.size!r}; known sizes: {', '.join(SIZES)}"))
            elif r.shape is None or (r.size is not None and r.width is not None):
                out.append((where + ("size",), "random needs a named size or all of width/depth/mlp/heads"))
            elif r.shape.width % r.shape.heads:
                out.append(
                    (where + ("heads",), f"heads ({r.shape.heads}) must divide width ({r.shape.width})")
                )
        if (r.mean is None) != (r.std is None):
            out.append((where + ("mean" if r.mean is None else "std",), "give mean and std together"))
        if r.name in rung_names:
            out.append((where + ("name",), f"{r.name!r} is also a rung's name"))
        if r.name in seen:
            out.append(
                (where + ("name",), f"duplicate reference name {r.name!r} (also references[{seen[r.name]}])")
            )
        seen[r.name] = i
    return out


@dataclass(frozen=True)
class ReferenceConfig:
    """A resolved reference: its entry plus the sweep's clip (frames, resolution, tubelet), which
    every reference reads and which shapes `pixels` and `random`."""

    sweep: str
    entry: Reference
    frames: int
    resolution: int
    tubelet: tuple[int, int, int]

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def source(self) -> str:
        return self.entry.source

    def identity(self) -> dict[str, Any]:
        entry = self.entry.model_dump(mode="json", exclude={"trust_remote_code"}, exclude_none=True)
        return {"entry": entry, "clip": [self.frames, self.resolution, list(self.tubelet)]}

    @property
    def hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def key(self) -> str:
        """Directory and tag name: `<name>-<hash6>`."""
        return f"{self.name}-{self.hash[:6]}"

    @property
    def model_id(self) -> str:
        """What the reference is, in one string: the hub id or path, or the built-in's shape."""
        e = self.entry
        if e.source == "hf":
            return e.id  # type: ignore[return-value]
        if e.source in ("fourds", "export"):
            return e.path  # type: ignore[return-value]
        if e.source == "random":
            s = e.shape
            return e.size or f"w{s.width}d{s.depth}m{s.mlp}h{s.heads}"  # type: ignore[union-attr]
        return f"tubelet {'x'.join(map(str, self.tubelet))}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep,
            "key": self.key,
            "entry": self.entry.model_dump(mode="json"),
            "clip": {"frames": self.frames, "resolution": self.resolution, "tubelet": list(self.tubelet)},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceConfig:
        c = d["clip"]
        return cls(d["sweep"], Reference(**d["entry"]), c["frames"], c["resolution"], tuple(c["tubelet"]))
