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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contracts.cost import decoder_params, encoder_params, flops_per_clip
from contracts.errors import UserError
from contracts.shapes import SIZES, MAEConfig, MupBase, ViTShape
from contracts.storage import StorageError, root_of
from contracts.tasks import EVAL_FORMATS, MODES, SYNTHETIC, TASK_NAMES, TASKS

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
# What the report can put on a figure's x axis: encoder parameters, or training FLOPs.
X_AXES = ("params", "train_flops")
VAL_CLIPS = 128  # pretraining.val_clips by default; a rung's identity holds it only when it differs


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
    # Processes decoding batches ahead, per rank (0: one background thread in the rank itself).
    # How the data is read, not which: never part of a rung's identity.
    workers: NonNegInt = 0


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


class LRRule(_Strict):
    """How the learning rate changes from the base rung to the others (N: encoder parameters).

    constant: every rung trains at optimizer.lr; inverse_width: lr · base_width / width;
    power: lr · (N / N_base)^exponent (OLMo-style ladders use -1/3); mup: μP (Tensor Programs V),
    where optimizer.lr is the base rung's and each wider rung scales its hidden matrices' LR
    (and init-time multipliers) by base / width inside the model, so one LR transfers."""

    rule: Literal["constant", "inverse_width", "power", "mup"] = "constant"
    exponent: float | None = None  # power only


class SizeRule(_Strict):
    """How warmup steps or batch size change with encoder parameters N: constant, or
    power: base · (N / N_base)^exponent, rounded (a batch to a multiple of the rung's workers)."""

    rule: Literal["constant", "power"] = "constant"
    exponent: float | None = None  # power only


class Scaling(_Strict):
    """Hyperparameters scaled per rung from a base rung, resolved before hashing: the rung's
    identity, `sweep plan` and MLflow all see the values the rung trains with."""

    base: str | None = None  # the rung whose size the base values are for (default: the ladder's first)
    lr: LRRule = LRRule()
    warmup: SizeRule = SizeRule()
    batch: SizeRule = SizeRule()

    @property
    def active(self) -> bool:
        return any(r.rule != "constant" for r in (self.lr, self.warmup, self.batch))


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
    # Held-out clips whose MAE loss is logged as val/loss at every checkpoint (0: none). Synthetic data
    # only: the first val_clips clips of the world's `val` split, with masks fixed by a seed, the same
    # for every rung. Real sources get none: training reads every clip of them (orchestrator.training.loop).
    val_clips: NonNegInt = VAL_CLIPS
    seed: int = 0
    gpus: NonNegInt = 0  # GPUs per rung; 0 trains on CPU workers
    cpu_workers: PosInt = 2  # workers per rung when gpus == 0
    cpus_per_worker: PosInt = 1
    # Restarts of a rung's worker group (a dead worker, a lost node, a store that kept refusing an
    # upload) before the rung is failed; each resumes from the last checkpoint. Raise on preemptible nodes.
    max_failures: NonNegInt = 2
    scaling: Scaling = Scaling()


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
    # Readouts trained per eval, with seeds seed .. seed + seeds - 1: the metric is their mean, and
    # its standard error adds the spread between seeds to the bootstrap's over test clips (evals.run).
    seeds: PosInt = 1


class EvalData(_Strict):
    """One task's eval dataset on disk (data4d.evalsets reads it; README, "Eval datasets", has the
    layouts)."""

    format: str  # a key of contracts.tasks.EVAL_FORMATS, which also says the task it serves
    path: str
    stride: PosInt = 1  # frame stride of a clip (clips start at a video's first frame)
    seed: int = 0  # the split of a dataset without split files of its own
    query_mode: Literal["first", "strided"] = "first"  # point tracking: TAP-Vid's query sampling
    points: PosInt = 32  # point tracking: queries per clip

    @property
    def label(self) -> str:
        """What results call this dataset: "<format>:<file or folder name>" (MLflow-key safe)."""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(self.path.rstrip("/")).stem or "data")
        return f"{self.format}:{name}"

    @classmethod
    def parse(cls, text: str) -> tuple[str, EvalData]:
        """`FORMAT:PATH` (the CLI's --data) -> (task, EvalData); SpecError for an unknown format."""
        fmt, sep, path = text.partition(":")
        if not sep or not path:
            raise SpecError(f"--data {text!r}: expected FORMAT:PATH, e.g. tapvid:/data/tapvid_davis.pkl")
        if fmt not in EVAL_FORMATS:
            raise SpecError(f"--data {text!r}: unknown format {fmt!r}; formats: {', '.join(EVAL_FORMATS)}")
        return EVAL_FORMATS[fmt], cls(format=fmt, path=path)


def dataset_label(data: EvalData | None) -> str:
    return SYNTHETIC if data is None else data.label


class Evals(_Strict):
    tasks: list[Literal[TASK_NAMES]] = list(TASK_NAMES)  # type: ignore[valid-type]
    modes: list[Literal[MODES]] = ["frozen"]  # type: ignore[valid-type]
    checkpoints: Literal["final", "all"] | list[PosInt] = "all"
    readout: Readout = Readout()
    # Per-task changes to `readout`, e.g. {point_tracking: {epochs: 30}}: only the fields given here differ.
    task_readout: dict[Literal[TASK_NAMES], Readout] = {}  # type: ignore[valid-type]
    cpus: PosInt = 1  # resources of one eval job
    gpus: NonNegInt = 0
    # Per-task datasets on disk, e.g. {point_tracking: {format: tapvid, path: /data/tapvid_davis.pkl}};
    # a task not named here is scored on the synthetic world.
    data: dict[Literal[TASK_NAMES], EvalData] = {}  # type: ignore[valid-type]

    def readout_for(self, task: str) -> Readout:
        """The readout settings `task` is trained with: the shared `readout`, then the task's own
        needs from the catalog (contracts.tasks), then this spec's `task_readout` for it."""
        update = dict(TASKS[task].readout)
        changes = self.task_readout.get(task)
        if changes is not None:
            update |= {k: getattr(changes, k) for k in changes.model_fields_set}
        return self.readout.model_copy(update=update) if update else self.readout


class Report(_Strict):
    # auto: every size law backtested per series and the best selected (`sweep report --help`)
    fits: list[Literal["auto", "powerlaw", "saturating", "chinchilla"]] = ["auto"]
    x: Literal[X_AXES] = "params"  # type: ignore[valid-type]


class Search(_Strict):
    """A learning-rate grid as a sweep axis: each listed rung becomes one rung per LR, each with its
    own identity, directory and MLflow run (`micro2-lr2e-3`, run name `micro2-491K-lr2e-3`).
    `sweep report` picks the best point per size, fits the optimal LR against size and suggests
    an LR for the rungs that were not searched."""

    lr: Annotated[list[PosFloat], Field(min_length=2)]
    rungs: list[str] | None = None  # default: every rung
    # What "best" means without a held-out loss: a `task/metric` of the evals (direction from its name).
    metric: str | None = None


class SweepSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    tracking: Tracking = Tracking()
    # Where run directories live: None for `runs/` (or --runs-dir), else a local path or a store URI
    # (s3://bucket/prefix, gs://…): contracts.storage.
    storage: str | None = None
    cluster: Cluster = Cluster()
    data: Data = Data()
    pretraining: Pretraining = Pretraining()
    ladder: Annotated[list[Rung], Field(min_length=1)]
    evals: Evals = Evals()
    report: Report = Report()
    search: Search | None = None

    def rungs(self) -> list[RungConfig]:
        """Every rung to train: the ladder, with each searched rung expanded into its LR grid."""
        base, out = self.base_rung(), []
        searched = set(self.search.rungs or [rung_name(r) for r in self.ladder]) if self.search else set()
        for r in self.ladder:
            if rung_name(r) not in searched:
                out.append(resolve_rung(self, r, base))
                continue
            for lr in self.search.lr:  # type: ignore[union-attr]
                rc = resolve_rung(self, r.model_copy(update={"lr": lr}), base)
                out.append(replace(rc, name=f"{rc.name}-lr{lr_tag(lr)}", search_of=rc.name))
        return out

    def base_rung(self) -> Rung:
        """The rung the scaling rules scale from."""
        name = self.pretraining.scaling.base
        return next((r for r in self.ladder if rung_name(r) == name), self.ladder[0])

    def base_config(self) -> RungConfig:
        base = self.base_rung()
        return resolve_rung(self, base, base)

    def rung(self, name: str) -> RungConfig:
        for r in self.rungs():
            if r.name == name:
                return r
        raise SpecError(f"no rung named {name!r}; the ladder has: {', '.join(r.name for r in self.rungs())}")

    @field_validator("storage")
    @classmethod
    def _storage_uri(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                root_of(v)
            except StorageError as e:
                raise ValueError(e.message) from None
        return v

    def spec_hash(self) -> str:
        # Where the runs are stored is not what the sweep is (as a rung's identity ignores where it runs).
        return _hash(self.model_dump(mode="json", exclude={"storage"}))


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
    search_of: str | None = None  # an LR-grid point of this ladder rung (`search` in the spec)
    val_clips: int = VAL_CLIPS  # measured at every checkpoint; in the identity only when not the default
    max_failures: int = 2  # runtime: Ray Train's worker-group restarts before the rung fails

    def identity(self) -> dict[str, Any]:
        """The fields that decide this rung's result; its hash names its run directory. val_clips
        decides what val/loss measures, so a non-default one is part of it; the default is left out
        so that rungs from before val/loss existed keep their hash (and directory)."""
        extra = {"val_clips": self.val_clips} if self.val_clips != VAL_CLIPS else {}
        return extra | {
            "model": self.model.to_dict(),
            "data": self.data.model_dump(mode="json", exclude={"workers"}),
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
        """Human name used in MLflow, like `B-88M` (an LR-grid point: `B-88M-lr2e-3`)."""
        if self.search_of:
            return f"{self.search_of}-{human_count(self.encoder_params)}-lr{lr_tag(self.optimizer.lr)}"
        return f"{self.name}-{human_count(self.encoder_params)}"

    @property
    def flops_per_clip(self) -> int:
        return flops_per_clip(self.model).train

    @property
    def train_flops(self) -> int:
        return self.flops_per_clip * self.batch_size * self.steps

    def to_dict(self) -> dict[str, Any]:
        d = self.identity() | {
            "sweep": self.sweep,
            "name": self.name,
            "key": self.key,
            "search_of": self.search_of,
        }
        d["val_clips"] = self.val_clips
        d["data"] = self.data.model_dump(mode="json")  # with data.workers, which identity() leaves out
        d["runtime"] = {
            "gpus": self.gpus,
            "workers": self.workers,
            "cpus_per_worker": self.cpus_per_worker,
            "micro_batch_size": self.micro_batch_size,
            "zero_stage": self.zero_stage,
            "activation_checkpointing": self.activation_checkpointing,
            "checkpoint_interval": self.checkpoint_interval,
            "max_failures": self.max_failures,
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
            search_of=d.get("search_of"),
            val_clips=d.get("val_clips", VAL_CLIPS),
            **rt,
        )


def lr_tag(lr: float) -> str:
    """2e-3 -> '2e-3', 1.5e-4 -> '1.5e-4': short, exact to three digits, safe in a directory name."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


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


def _shape_config(spec: SweepSpec, encoder: ViTShape, mup: MupBase | None = None) -> MAEConfig:
    pt, data, d = spec.pretraining, spec.data, spec.pretraining.decoder
    return MAEConfig(
        encoder=encoder,
        decoder=ViTShape(d.width, d.depth, d.mlp, d.heads),
        frames=data.frames,
        size=data.resolution,
        tubelet=tuple(data.tubelet),
        mask_ratio=pt.mask_ratio,
        norm_target=pt.norm_target,
        mup=mup,
    )


def scaled_hyperparameters(spec: SweepSpec, r: Rung, base: Rung, workers: int) -> dict[str, Any]:
    """lr, warmup_steps, batch_size and the μP base for rung `r` under `pretraining.scaling`
    (a rung's own `lr` / `batch_size` still win over a rule)."""
    pt, sc = spec.pretraining, spec.pretraining.scaling
    shape, base_shape = rung_shape(r), rung_shape(base)
    ratio = encoder_params(_shape_config(spec, shape)) / encoder_params(_shape_config(spec, base_shape))
    lr = pt.optimizer.lr
    if sc.lr.rule == "inverse_width":
        lr *= base_shape.width / shape.width
    elif sc.lr.rule == "power":
        lr *= ratio**sc.lr.exponent  # type: ignore[operator]
    warmup = pt.schedule.warmup_steps
    if sc.warmup.rule == "power":
        warmup = round(warmup * ratio**sc.warmup.exponent)  # type: ignore[operator]
    batch = pt.batch_size
    if sc.batch.rule == "power":
        batch = max(workers, round(batch * ratio**sc.batch.exponent / workers) * workers)  # type: ignore[operator]
    d = _shape_config(spec, base_shape).decoder
    return {
        "lr": r.lr if r.lr is not None else lr,
        "warmup_steps": warmup,
        "batch_size": r.batch_size or batch,
        "mup": MupBase(base_shape, d) if sc.lr.rule == "mup" else None,
    }


def resolve_rung(spec: SweepSpec, r: Rung, base: Rung) -> RungConfig:
    pt, data = spec.pretraining, spec.data
    gpus = pt.gpus if r.gpus is None else r.gpus
    workers = gpus if gpus > 0 else (r.cpu_workers or pt.cpu_workers)
    hp = scaled_hyperparameters(spec, r, base, workers)
    batch = hp["batch_size"]
    clips = r.clips_seen or (None if r.steps else pt.clips_seen)
    steps = r.steps or (math.ceil(clips / batch) if clips else pt.steps)
    precision = pt.precision if pt.precision != "auto" else ("bf16" if gpus > 0 else "fp32")
    optimizer = (
        pt.optimizer if hp["lr"] == pt.optimizer.lr else pt.optimizer.model_copy(update={"lr": hp["lr"]})
    )
    schedule = pt.schedule
    if hp["warmup_steps"] != schedule.warmup_steps:
        schedule = schedule.model_copy(update={"warmup_steps": hp["warmup_steps"]})
    return RungConfig(
        sweep=spec.name,
        name=rung_name(r),
        model=_shape_config(spec, rung_shape(r), hp["mup"]),
        data=data,
        optimizer=optimizer,
        schedule=schedule,
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
        val_clips=pt.val_clips,
        max_failures=pt.max_failures,
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


def _check_scaling(spec: SweepSpec) -> list[tuple[tuple, str]]:
    sc, out = spec.pretraining.scaling, []
    where = ("pretraining", "scaling")
    for name in ("lr", "warmup", "batch"):
        rule = getattr(sc, name)
        if rule.rule == "power" and rule.exponent is None:
            out.append(
                (
                    where + (name, "exponent"),
                    "rule 'power' needs an exponent (value = base * (N / N_base)^exponent)",
                )
            )
        elif rule.rule != "power" and rule.exponent is not None:
            out.append(
                (where + (name, "exponent"), f"an exponent applies to rule 'power' only, not {rule.rule!r}")
            )
    names = [rung_name(r) for r in spec.ladder]
    if sc.base is not None and sc.base not in names:
        out.append((where + ("base",), f"no rung named {sc.base!r}; the ladder has: {', '.join(names)}"))
    if spec.search is not None:
        for i, name in enumerate(spec.search.rungs or []):
            if name not in names:
                out.append(
                    (("search", "rungs", i), f"no rung named {name!r}; the ladder has: {', '.join(names)}")
                )
        if len(set(spec.search.lr)) != len(spec.search.lr):
            out.append((("search", "lr"), "the LR grid lists a value twice"))
        metric = spec.search.metric
        if metric is not None and (metric.count("/") != 1 or metric.split("/")[0] not in spec.evals.tasks):
            out.append(
                (
                    ("search", "metric"),
                    f"metric must be 'task/metric' with a task of evals.tasks, got {metric!r}",
                )
            )
    return out


def _cross_checks(spec: SweepSpec) -> list[tuple[tuple, str]]:
    """Checks across fields; each names the field to fix."""
    out: list[tuple[tuple, str]] = []
    d = spec.data
    t, h, w = d.tubelet
    if d.frames % t or d.resolution % h or d.resolution % w:
        out.append(
            (
                ("data", "tubelet"),
                f"tubelet {t}x{h}x{w} must divide the clip {d.frames}x{d.resolution}x{d.resolution} "
                "(frames x resolution)",
            )
        )
    if d.source != "synthetic" and not d.path:
        out.append((("data", "path"), f"source '{d.source}' needs a path to the data"))
    for task, ed in spec.evals.data.items():
        if ed.format not in EVAL_FORMATS:
            out.append(
                (
                    ("evals", "data", task, "format"),
                    f"unknown format {ed.format!r}; formats: {', '.join(EVAL_FORMATS)}",
                )
            )
        elif EVAL_FORMATS[ed.format] != task:
            out.append(
                (
                    ("evals", "data", task, "format"),
                    f"format {ed.format!r} is data for {EVAL_FORMATS[ed.format]}, not {task}",
                )
            )
    pt = spec.pretraining
    out += _check_shape(("pretraining", "decoder"), pt.decoder.width, pt.decoder.heads)
    if pt.steps and pt.clips_seen:
        out.append((("pretraining", "clips_seen"), "give steps or clips_seen, not both"))
    out += _check_scaling(spec)
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
