"""The sweep spec: a YAML file validated by pydantic, resolved into one config per rung.

`load_spec(path)` returns a `SweepSpec` or raises `SpecError` naming the file, the
field path and the line. `spec.rungs()` resolves shared defaults and per-rung
overrides into `RungConfig`s, each with an identity hash over only what decides
its result (shape, data, optimisation, seed), never where or how it runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.cost import decoder_params, encoder_params, flops_per_clip
from contracts.errors import UserError
from contracts.shapes import SIZES, MAEConfig, ViTShape
from contracts.tasks import MODES, TASK_NAMES, TASKS

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
# What the report can put on a figure's x axis: encoder parameters, or training FLOPs.
X_AXES = ("params", "train_flops")


class SpecError(UserError):
    """A problem the user can fix in their spec: one message, exit code 2."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tracking(_Strict):
    uri: str = "sqlite:///runs/mlflow.db"


class Cluster(_Strict):
    address: str | None = None  # None: start a local Ray cluster
    autoscaling: bool = False  # allow rungs larger than the cluster is now


class World(_Strict):
    """Knobs of the synthetic world (data4d.SyntheticWorld)."""

    objects: PosInt = 3
    points: PosInt = 64
    focal: PosFloat = 1.0  # focal length in units of the image width


class Data(_Strict):
    source: Literal["synthetic", "video_folder", "webdataset"] = "synthetic"
    path: str | None = None  # folder of videos or shard pattern for real data
    frames: PosInt = 16
    resolution: PosInt = 224
    tubelet: tuple[PosInt, PosInt, PosInt] = (2, 16, 16)
    stride: PosInt = 1  # frame sampling stride for real videos
    world: World = World()


class DecoderShape(_Strict):
    width: PosInt = 384
    depth: PosInt = 4
    mlp: PosInt = 1536
    heads: PosInt = 6


class Optimizer(_Strict):
    name: Literal["adamw"] = "adamw"
    lr: PosFloat = 1.5e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    grad_clip: Annotated[float, Field(ge=0)] = 1.0  # 0 disables clipping


class Schedule(_Strict):
    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: NonNegInt = 0
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0


class Pretraining(_Strict):
    mask_ratio: Fraction = 0.95
    norm_target: bool = False
    decoder: DecoderShape = DecoderShape()
    optimizer: Optimizer = Optimizer()
    schedule: Schedule = Schedule()
    batch_size: PosInt = 256  # global clips per optimiser step
    micro_batch_size: PosInt | None = None  # per worker; default batch_size / workers
    steps: PosInt | None = None
    clips_seen: PosInt | None = None  # alternative to steps: steps = ceil(clips_seen / batch_size)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    zero_stage: Literal[1, 2, 3] = 3
    activation_checkpointing: bool = False
    checkpoint_interval: PosInt = 1000
    seed: int = 0
    gpus: NonNegInt = 0  # GPUs per rung; 0 trains on CPU workers
    cpu_workers: PosInt = 2  # workers per rung when gpus == 0
    cpus_per_worker: PosInt = 1


class Rung(_Strict):
    name: str | None = None
    size: str | None = None  # a registry name (S, B, L, H, G, e, j) ...
    width: PosInt | None = None  # ... or an explicit shape
    depth: PosInt | None = None
    mlp: PosInt | None = None
    heads: PosInt | None = None
    # Per-rung overrides of the pretraining defaults.
    gpus: NonNegInt | None = None
    cpu_workers: PosInt | None = None
    batch_size: PosInt | None = None
    micro_batch_size: PosInt | None = None
    steps: PosInt | None = None
    clips_seen: PosInt | None = None
    lr: PosFloat | None = None
    checkpoint_interval: PosInt | None = None


class Readout(_Strict):
    depth_fraction: Fraction | Literal[1] = 0.95  # encoder block to read features from
    width: PosInt = 128
    heads: PosInt = 4
    epochs: PosInt = 30
    batch_size: PosInt = 16
    lr: PosFloat = 1e-3
    finetune_lr_scale: PosFloat = 0.1  # encoder LR relative to the readout's in finetune mode
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    train_clips: PosInt = 256
    val_clips: PosInt = 64
    test_clips: PosInt = 64
    seed: int = 0


class Evals(_Strict):
    tasks: list[Literal[TASK_NAMES]] = list(TASK_NAMES)  # type: ignore[valid-type]
    modes: list[Literal[MODES]] = ["frozen"]  # type: ignore[valid-type]
    checkpoints: Literal["final", "all"] | list[PosInt] = "all"
    readout: Readout = Readout()
    # Per-task changes to `readout`, e.g. {point_tracking: {epochs: 30}}: only the fields given here differ.
    task_readout: dict[Literal[TASK_NAMES], Readout] = {}  # type: ignore[valid-type]
    cpus: PosInt = 1  # resources of one eval job
    gpus: NonNegInt = 0

    def readout_for(self, task: str) -> Readout:
        """The readout settings `task` is trained with: the shared `readout`, then the task's own
        needs from the catalog (contracts.tasks), then this spec's `task_readout` for it."""
        update = dict(TASKS[task].readout)
        changes = self.task_readout.get(task)
        if changes is not None:
            update |= {k: getattr(changes, k) for k in changes.model_fields_set}
        return self.readout.model_copy(update=update) if update else self.readout


class Report(_Strict):
    fits: list[Literal["powerlaw", "saturating", "chinchilla"]] = ["powerlaw"]
    x: Literal[X_AXES] = "params"  # type: ignore[valid-type]


class SweepSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    tracking: Tracking = Tracking()
    cluster: Cluster = Cluster()
    data: Data = Data()
    pretraining: Pretraining = Pretraining()
    ladder: Annotated[list[Rung], Field(min_length=1)]
    evals: Evals = Evals()
    report: Report = Report()

    def rungs(self) -> list[RungConfig]:
        return [resolve_rung(self, r) for r in self.ladder]

    def rung(self, name: str) -> RungConfig:
        for r in self.rungs():
            if r.name == name:
                return r
        raise SpecError(f"no rung named {name!r}; the ladder has: {', '.join(r.name for r in self.rungs())}")

    def spec_hash(self) -> str:
        return _hash(self.model_dump(mode="json"))


@dataclass(frozen=True)
class RungConfig:
    """Everything one rung's pretraining needs, resolved from the spec."""

    sweep: str
    name: str
    model: MAEConfig
    data: Data
    optimizer: Optimizer
    schedule: Schedule
    batch_size: int
    steps: int
    precision: Literal["bf16", "fp32"]
    seed: int
    # Runtime only: not part of the identity.
    gpus: int
    workers: int
    cpus_per_worker: int
    micro_batch_size: int
    zero_stage: int
    activation_checkpointing: bool
    checkpoint_interval: int

    def identity(self) -> dict[str, Any]:
        """The fields that decide this rung's result; its hash names its run directory."""
        return {
            "model": self.model.to_dict(),
            "data": self.data.model_dump(mode="json"),
            "optimizer": self.optimizer.model_dump(mode="json"),
            "schedule": self.schedule.model_dump(mode="json"),
            "batch_size": self.batch_size,
            "steps": self.steps,
            "precision": self.precision,
            "seed": self.seed,
        }

    @property
    def hash(self) -> str:
        return _hash(self.identity())

    @property
    def key(self) -> str:
        """Directory and tag name: `<rung>-<hash6>`."""
        return f"{self.name}-{self.hash[:6]}"

    @property
    def encoder_params(self) -> int:
        return encoder_params(self.model)

    @property
    def total_params(self) -> int:
        return encoder_params(self.model) + decoder_params(self.model)

    @property
    def run_name(self) -> str:
        """Human name used in MLflow, like `B-88M`."""
        return f"{self.name}-{human_count(self.encoder_params)}"

    @property
    def flops_per_clip(self) -> int:
        return flops_per_clip(self.model).train

    @property
    def train_flops(self) -> int:
        return self.flops_per_clip * self.batch_size * self.steps

    def to_dict(self) -> dict[str, Any]:
        d = self.identity() | {"sweep": self.sweep, "name": self.name, "key": self.key}
        d["runtime"] = {
            "gpus": self.gpus,
            "workers": self.workers,
            "cpus_per_worker": self.cpus_per_worker,
            "micro_batch_size": self.micro_batch_size,
            "zero_stage": self.zero_stage,
            "activation_checkpointing": self.activation_checkpointing,
            "checkpoint_interval": self.checkpoint_interval,
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RungConfig:
        rt = d["runtime"]
        return cls(
            sweep=d["sweep"],
            name=d["name"],
            model=MAEConfig.from_dict(d["model"]),
            data=Data(**d["data"]),
            optimizer=Optimizer(**d["optimizer"]),
            schedule=Schedule(**d["schedule"]),
            batch_size=d["batch_size"],
            steps=d["steps"],
            precision=d["precision"],
            seed=d["seed"],
            **rt,
        )


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f}{unit}" if v >= 10 else f"{v:.1f}{unit}"
    return str(n)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def rung_shape(r: Rung) -> ViTShape:
    if r.size is not None:
        return SIZES[r.size]
    return ViTShape(width=r.width, depth=r.depth, mlp=r.mlp, heads=r.heads)  # type: ignore[arg-type]


def rung_name(r: Rung) -> str:
    if r.name:
        return r.name
    if r.size:
        return r.size
    return f"w{r.width}d{r.depth}"


def resolve_rung(spec: SweepSpec, r: Rung) -> RungConfig:
    pt, data = spec.pretraining, spec.data
    gpus = pt.gpus if r.gpus is None else r.gpus
    workers = gpus if gpus > 0 else (r.cpu_workers or pt.cpu_workers)
    batch = r.batch_size or pt.batch_size
    clips = r.clips_seen or (None if r.steps else pt.clips_seen)
    steps = r.steps or (math.ceil(clips / batch) if clips else pt.steps)
    precision = pt.precision if pt.precision != "auto" else ("bf16" if gpus > 0 else "fp32")
    optimizer = pt.optimizer if r.lr is None else pt.optimizer.model_copy(update={"lr": r.lr})
    d = pt.decoder
    model = MAEConfig(
        encoder=rung_shape(r),
        decoder=ViTShape(d.width, d.depth, d.mlp, d.heads),
        frames=data.frames,
        size=data.resolution,
        tubelet=tuple(data.tubelet),
        mask_ratio=pt.mask_ratio,
        norm_target=pt.norm_target,
    )
    return RungConfig(
        sweep=spec.name,
        name=rung_name(r),
        model=model,
        data=data,
        optimizer=optimizer,
        schedule=pt.schedule,
        batch_size=batch,
        steps=steps,  # type: ignore[arg-type]  (checked in _cross_checks)
        precision=precision,
        seed=pt.seed,
        gpus=gpus,
        workers=workers,
        cpus_per_worker=pt.cpus_per_worker,
        micro_batch_size=r.micro_batch_size or pt.micro_batch_size or max(1, batch // workers),
        zero_stage=pt.zero_stage,
        activation_checkpointing=pt.activation_checkpointing,
        checkpoint_interval=r.checkpoint_interval or pt.checkpoint_interval,
    )


# ---------------------------------------------------------------- loading and errors


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    text = path.read_text()
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(
            f"{path}:1: the spec must be a mapping of sections (name, data, pretraining, ladder, ...)"
        )
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not _is_type_tag(p))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{path}:{_line_of(root, loc)}: {_dotted(loc)}: {msg}")
        raise SpecError("invalid sweep spec\n  " + "\n  ".join(lines)) from None
    problems = _cross_checks(spec)
    if problems:
        raise SpecError(
            "invalid sweep spec\n  "
            + "\n  ".join(f"{path}:{_line_of(root, loc)}: {_dotted(loc)}: {m}" for loc, m in problems)
        )
    return spec


def _is_type_tag(p: Any) -> bool:
    # pydantic adds union-member tags like 'literal[...]' or 'list[int]' to locations
    return isinstance(p, str) and ("[" in p or p in {"int", "float", "str", "bool"})


def _dotted(loc: tuple) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _line_of(node: yaml.Node | None, loc: tuple) -> int:
    """1-based line of the deepest YAML node on `loc`."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    child, line = v, k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _check_shape(where: tuple, width: int, heads: int) -> list[tuple[tuple, str]]:
    if width % heads:
        return [(where + ("heads",), f"heads ({heads}) must divide width ({width})")]
    return []


def _cross_checks(spec: SweepSpec) -> list[tuple[tuple, str]]:
    """Checks across fields; each names the field to fix."""
    out: list[tuple[tuple, str]] = []
    d = spec.data
    t, h, w = d.tubelet
    if d.frames % t or d.resolution % h or d.resolution % w:
        out.append(
            (
                ("data", "tubelet"),
                f"tubelet {t}x{h}x{w} must divide the clip {d.frames}x{d.resolution}x{d.resolution} (frames x resolution)",
            )
        )
    if d.source != "synthetic" and not d.path:
        out.append((("data", "path"), f"source '{d.source}' needs a path to the data"))
    pt = spec.pretraining
    out += _check_shape(("pretraining", "decoder"), pt.decoder.width, pt.decoder.heads)
    if pt.steps and pt.clips_seen:
        out.append((("pretraining", "clips_seen"), "give steps or clips_seen, not both"))
    seen: dict[str, int] = {}
    for i, r in enumerate(spec.ladder):
        where = ("ladder", i)
        explicit = [r.width, r.depth, r.mlp, r.heads]
        if r.size is not None:
            if r.size not in SIZES:
                out.append((where + ("size",), f"unknown size {r.size!r}; known sizes: {', '.join(SIZES)}"))
            if any(v is not None for v in explicit):
                out.append((where + ("size",), "give a named size or width/depth/mlp/heads, not both"))
        elif any(v is None for v in explicit):
            missing = [
                k for k, v in zip(("width", "depth", "mlp", "heads"), explicit, strict=True) if v is None
            ]
            out.append(
                (
                    where + (missing[0],),
                    f"a rung needs a size or all of width/depth/mlp/heads (missing: {', '.join(missing)})",
                )
            )
        else:
            out += _check_shape(where, r.width, r.heads)  # type: ignore[arg-type]
        name = rung_name(r)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.]*", name):
            out.append((where + ("name",), f"rung name {name!r} may hold only letters, digits, '_' and '.'"))
        if name in seen:
            out.append((where + ("name",), f"duplicate rung name {name!r} (also ladder[{seen[name]}])"))
        seen[name] = i
        if not (r.steps or r.clips_seen or pt.steps or pt.clips_seen):
            out.append(
                (
                    where + ("steps",),
                    "no training length: set pretraining.steps or clips_seen (or the rung's)",
                )
            )
        gpus = pt.gpus if r.gpus is None else r.gpus
        workers = gpus if gpus > 0 else (r.cpu_workers or pt.cpu_workers)
        batch = r.batch_size or pt.batch_size
        if batch % workers:
            out.append(
                (where + ("batch_size",), f"batch size {batch} must divide evenly over {workers} workers")
            )
    if out:
        return out
    for i, rc in enumerate(spec.rungs()):
        micro = rc.micro_batch_size
        if rc.batch_size % (micro * rc.workers):
            out.append(
                (
                    ("ladder", i, "micro_batch_size"),
                    f"batch {rc.batch_size} is not a multiple of micro-batch {micro} x {rc.workers} workers",
                )
            )
    return out
