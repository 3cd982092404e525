"""Frozen backbones other than our own rungs, behind one interface, for reference models (issue 25).

    bb = load_hf("facebook/dinov2-base")            # or a directory saved with save_pretrained
    feats = bb.features(video_uint8, readout_frames=4)   # (B, 4 * h * w, D) on a (t, h, w) grid

Every backbone turns a clip (B, T, S, S, 3) uint8 into features on a (t, h, w) token grid in raster
order, the layout the readouts (evals.readout) read, with the time axis brought to the readout's common
length by a cubic resize, as 4DS's `EncoderToReadout` does (`resize_time`). What each does:

- `HFBackbone`: a transformers model. Video models (VideoMAE, V-JEPA 2, whose predictor is skipped)
  see the clip; image models (DINOv2 with and without registers, SigLIP, CLIP, DINOv3) see each frame,
  frames folded into the batch, so their time axis has one step per frame. Frames are resized to the
  model's resolution (its preprocessor's crop size, else its config's; bilinear, the whole frame: no
  crop, so the geometric labels keep their meaning),
  clips are resampled to its frame count (nearest frame), and pixels are normalised with the model's
  own mean and std (its preprocessor_config.json, else the family's published default). Prefix tokens
  (CLS, registers) are dropped. The layer read follows 4DS's rule (`fourds_layer`).
- `PixelsBackbone`: the clip's raw tubelet patches ([-1, 1]) as features: the floor.
- `RandomBackbone`: our own MAE encoder (models.mae) at random init, read like a rung.

transformers is imported when a model is loaded, never at import time (layer 1 stays light).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from contracts.errors import UserError
from contracts.references import ReferenceConfig
from contracts.shapes import MAEConfig, ViTShape
from models.mae import Encoder, normalize_video

# The model families the adapter covers: transformers config model_type -> (class name, video?).
FAMILIES: dict[str, tuple[str, bool]] = {
    "videomae": ("VideoMAEModel", True),
    "vjepa2": ("VJEPA2Model", True),
    "dinov2": ("Dinov2Model", False),
    "dinov2_with_registers": ("Dinov2WithRegistersModel", False),
    "siglip": ("SiglipVisionModel", False),
    "siglip_vision_model": ("SiglipVisionModel", False),
    "clip": ("CLIPVisionModel", False),
    "clip_vision_model": ("CLIPVisionModel", False),
    "dinov3_vit": ("DINOv3ViTModel", False),
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# Each family's default pixel mean/std (its image processor's defaults), when a model has no
# preprocessor_config.json of its own.
DEFAULT_NORM = {
    "videomae": IMAGENET,
    "vjepa2": IMAGENET,
    "dinov2": IMAGENET,
    "dinov2_with_registers": IMAGENET,
    "dinov3_vit": IMAGENET,
    "siglip": HALF,
    "siglip_vision_model": HALF,
    "clip": CLIP_NORM,
    "clip_vision_model": CLIP_NORM,
}


class BackboneError(UserError):
    """A reference model that cannot be loaded or run as asked; the CLI turns it into exit code 2."""


def fourds_layer(num_blocks: int, fraction: float) -> int:
    """4DS's readout layer as an index into transformers' `hidden_states` ([embeddings, block 1 .. L]).

    4DS reads entry int((L + 1) * f) - 1 of [embeddings, embeddings, block 1, ..., block L-1]
    (representations4d `EncoderToReadout`, whose list holds the tokens twice, then every block but
    the last): f = 0.95 reads block 10 of 12 (ViT-B) and block 21 of 24 (ViT-L). Entries 0 and 1 are
    the embeddings, entry k >= 2 is block k - 1."""
    entry = int((num_blocks + 1) * fraction) - 1
    return max(0, entry - 1)


def cubic_kernel(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5, jax.image.resize's "cubic")."""
    x = np.abs(x)
    return np.where(
        x <= 1,
        ((a + 2) * x - (a + 3)) * x * x + 1,
        np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0),
    )


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a cubic resize with half-pixel centres, the kernel widened when
    shrinking (antialiased), weights outside the input dropped and each row renormalised: the rule
    of jax.image.resize(method="cubic"). Identity when n_in == n_out."""
    scale = n_out / n_in
    width = max(1.0, 1.0 / scale)  # the kernel stretches by 1/scale when downsampling
    centres = (np.arange(n_out) + 0.5) / scale - 0.5
    w = cubic_kernel((np.arange(n_in)[None, :] - centres[:, None]) / width)
    return w / w.sum(1, keepdims=True)


def resize_time(feats: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, t, h*w, D) -> (B, steps, h*w, D), cubic along time (4DS `EncoderToReadout`)."""
    t = feats.shape[1]
    if t == steps:
        return feats
    m = torch.from_numpy(resize_matrix(t, steps)).to(feats)
    return torch.einsum("st,btnd->bsnd", m, feats)


@dataclass(frozen=True)
class Geometry:
    """What a backbone reads and writes: input frames and resolution, its token grid and width."""

    frames: int
    size: int
    grid: tuple[int, int, int]  # (t, h, w) tokens before the time resize
    width: int


class Backbone:
    """features(video) -> (B, steps * h * w, D); `describe()` the params a reference run logs."""

    geometry: Geometry
    num_params: int
    layer: str  # which layer is read, in words

    def tokens(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, T, S, S, 3) uint8 on the device -> (B, t, h*w, D) float."""
        raise NotImplementedError

    @torch.no_grad()
    def features(self, video: np.ndarray, readout_frames: int, batch_size: int = 16) -> torch.Tensor:
        """(M, T, S, S, 3) uint8 -> (M, readout_frames * h * w, D) float32 on the CPU, in batches under
        no_grad (bf16 autocast on a GPU)."""
        device = self.device
        out = []
        for i in range(0, len(video), batch_size):
            x = torch.from_numpy(np.asarray(video[i : i + batch_size])).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                f = self.tokens(x)
            out.append(resize_time(f.float(), readout_frames).flatten(1, 2).cpu())
        return torch.cat(out)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def describe(self) -> dict:
        g = self.geometry
        return {
            "num_params": self.num_params,
            "layer": self.layer,
            # an image model reads every frame of the clip, one at a time
            "input_shape": f"{g.frames}x{g.size}x{g.size}" if g.frames else f"1x{g.size}x{g.size} per frame",
            "token_grid": "x".join(map(str, g.grid)) if g.frames else f"{g.grid[1]}x{g.grid[2]} per frame",
            "width": g.width,
        }


def resample_frames(video: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T, ...) -> (B, frames, ...) by the nearest frame in time (repeat or skip evenly)."""
    T = video.shape[1]
    if T == frames:
        return video
    idx = ((torch.arange(frames) + 0.5) * T / frames).long().clamp(max=T - 1)
    return video[:, idx.to(video.device)]


def resize_frames(video: torch.Tensor, size: int) -> torch.Tensor:
    """(B, T, S, S, 3) uint8 -> (B, T, 3, size, size) float in [0, 1], bilinear (no crop)."""
    B, T = video.shape[:2]
    x = video.flatten(0, 1).permute(0, 3, 1, 2).float().div(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.view(B, T, 3, size, size)


class HFBackbone(Backbone):
    def __init__(
        self,
        model: torch.nn.Module,
        family: str,
        fraction: float,
        frames: int | None = None,
        size: int | None = None,
        norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        layer: int | None = None,
    ):
        self.model, self.family = model.eval(), family
        self.video = FAMILIES[family][1]
        cfg = model.config
        self.patch = _int(cfg.patch_size)
        own_size = getattr(cfg, "crop_size", None) or cfg.image_size
        self.tubelet = getattr(cfg, "tubelet_size", 1) if self.video else 1
        own_frames = getattr(cfg, "num_frames", None) or getattr(cfg, "frames_per_clip", None)
        self.size = size or _int(own_size)
        self.frames = frames or own_frames  # image models: None, every frame of the clip
        if family == "videomae" and (self.size != _int(own_size) or (self.frames or 0) != own_frames):
            raise BackboneError(
                f"VideoMAE's position table is fixed at {own_frames} frames of {own_size}px; "
                f"cannot read {self.frames} frames of {self.size}px"
            )
        self.mean, self.std = (torch.tensor(v).view(1, 1, 3, 1, 1) for v in (norm or DEFAULT_NORM[family]))
        L = cfg.num_hidden_layers
        self.hidden_index = fourds_layer(L, fraction) if layer is None else layer
        if not 0 <= self.hidden_index <= L:
            raise BackboneError(f"layer {self.hidden_index} is out of range: the model has {L} blocks")
        self.layer = "embeddings" if self.hidden_index == 0 else f"block {self.hidden_index} of {L}"
        self.num_params = encoder_params(model)
        self.width = cfg.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def geometry(self) -> Geometry:
        hw = self.size // self.patch
        t = self.frames // self.tubelet if self.frames else 0  # image models: the clip's frame count
        return Geometry(self.frames or 0, self.size, (t, hw, hw), self.width)

    def pixel_values(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, S, S, 3) uint8 -> (B, T', 3, size, size), normalised as the model expects."""
        if self.frames:
            video = resample_frames(video, self.frames)
        x = resize_frames(video, self.size)
        return (x - self.mean.to(x)) / self.std.to(x)

    def tokens(self, video: torch.Tensor) -> torch.Tensor:
        x = self.pixel_values(video)
        B, T = x.shape[:2]
        x = x.to(self.dtype)
        kwargs = {"output_hidden_states": True}
        if self.family == "vjepa2":
            out = self.model(pixel_values_videos=x, skip_predictor=True, **kwargs)
        elif self.video:
            out = self.model(pixel_values=x, **kwargs)
        else:  # frames folded into the batch
            if self.family in ("clip", "clip_vision_model", "siglip", "siglip_vision_model"):
                kwargs["interpolate_pos_encoding"] = self.size != _int(self.model.config.image_size)
            out = self.model(pixel_values=x.flatten(0, 1), **kwargs)
        h = out.hidden_states[self.hidden_index]
        hw = (self.size // self.patch) ** 2
        t = T // self.tubelet if self.video else 1
        prefix = h.shape[1] - t * hw  # CLS and register tokens come first in every family covered
        if prefix < 0:
            raise BackboneError(f"{self.family}: {h.shape[1]} tokens, fewer than a {t}x{hw} grid")
        h = h[:, prefix:]
        return h.reshape(B, T // self.tubelet if self.video else T, hw, h.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def _int(v) -> int:
    """A config's patch/image size: an int, or a (h, w) pair of equal sides."""
    if isinstance(v, dict):
        v = v.get("height") or v.get("shortest_edge")
    if isinstance(v, list | tuple):
        if len(set(v)) != 1:
            raise BackboneError(f"non-square size {v} is not supported")
        v = v[0]
    return int(v)


def encoder_params(model: torch.nn.Module) -> int:
    """Parameters of the encoder alone: V-JEPA 2's predictor and SigLIP's pooling head are not counted."""
    skip = ("predictor.", "head.")
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))


def preprocessor(source: str) -> dict:
    """The model's preprocessor_config.json (local dir or HF cache, never the network), or {}."""
    from transformers.utils import cached_file

    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        try:
            found = cached_file(
                source,
                "preprocessor_config.json",
                local_files_only=True,
                _raise_exceptions_for_missing_entries=False,
            )
        except OSError:
            found = None
        if not found:
            return {}
        path = Path(found)
    return json.loads(path.read_text())


def processor_norm(d: dict) -> tuple | None:
    """(mean, std) of a preprocessor config, when it gives them."""
    if "image_mean" in d and "image_std" in d:
        return tuple(d["image_mean"]), tuple(d["image_std"])
    return None


def processor_size(d: dict) -> int | None:
    """The side a preprocessor hands the model: its crop when it crops (DINOv2's config says 518, its
    processor crops 224), else its resize."""
    if d.get("do_center_crop") and d.get("crop_size"):
        return _int(d["crop_size"])
    return _int(d["size"]) if d.get("size") else None


def hf_family(config) -> str:
    family = config.model_type
    if family not in FAMILIES:
        raise BackboneError(
            f"model type {family!r} is not covered by the adapter; covered: {', '.join(sorted(FAMILIES))}"
        )
    return family


def load_hf(
    source: str,
    fraction: float = 0.95,
    frames: int | None = None,
    size: int | None = None,
    norm: tuple | None = None,
    layer: int | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
) -> HFBackbone:
    """A transformers model (hub id or local dir) as a Backbone. Weights must already be at hand
    (contracts-level preflight fetched or refused them): nothing is downloaded here."""
    import transformers

    from_pretrained = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    config = transformers.AutoConfig.from_pretrained(source, **from_pretrained)
    family = hf_family(config)
    cls = getattr(transformers, FAMILIES[family][0])
    model = cls.from_pretrained(source, **from_pretrained)
    pre = preprocessor(source)
    norm = norm or processor_norm(pre)
    size = size or (processor_size(pre) if family != "videomae" else None)  # VideoMAE: its table's size
    return HFBackbone(model.to(device), family, fraction, frames, size, norm, layer)


class PixelsBackbone(Backbone):
    """The clip's tubelet patches, pixels in [-1, 1] ordered (t, h, w, C), as features."""

    def __init__(self, clip: MAEConfig):
        self.clip = clip
        self.num_params = 0
        self.layer = "pixels"
        self.geometry = Geometry(clip.frames, clip.size, clip.grid, clip.patch_dim)

    def tokens(self, video: torch.Tensor) -> torch.Tensor:
        x = normalize_video(video)  # (B, C, T, S, S)
        B, C, T, H, W = x.shape
        t, h, w = self.clip.tubelet
        x = x.reshape(B, C, T // t, t, H // h, h, W // w, w).permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(B, T // t, (H // h) * (W // w), t * h * w * C)


class EncoderBackbone(Backbone):
    """Our MAE encoder (models.mae): random init, an imported 4DS checkpoint or another sweep's export.
    Clips are brought to its own frames and resolution (its position table is fixed), and the output
    of block `blocks` (0: the embeddings) is read."""

    def __init__(self, encoder: Encoder, blocks: int, num_params: int | None = None):
        self.encoder = encoder.eval()
        cfg = encoder.cfg
        if not 0 <= blocks <= cfg.encoder.depth:
            raise BackboneError(f"layer {blocks} is out of range: the encoder has {cfg.encoder.depth} blocks")
        self.blocks = blocks
        self.num_params = (
            num_params if num_params is not None else sum(p.numel() for p in encoder.parameters())
        )
        self.layer = "embeddings" if blocks == 0 else f"block {blocks} of {cfg.encoder.depth}"
        self.geometry = Geometry(cfg.frames, cfg.size, cfg.grid, cfg.encoder.width)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def tokens(self, video: torch.Tensor) -> torch.Tensor:
        cfg = self.encoder.cfg
        x = resize_frames(resample_frames(video, cfg.frames), cfg.size)  # (B, T, 3, S, S) in [0, 1]
        x = x.permute(0, 2, 1, 3, 4).mul(2).sub(1)  # (B, C, T, S, S) in [-1, 1], as normalize_video
        f = self.encoder.run_blocks(self.encoder.embed(x), upto=self.blocks)
        t, h, w = cfg.grid
        return f.view(len(f), t, h * w, f.shape[-1])


def random_encoder(cfg: MAEConfig, seed: int) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(cfg)


def readout_grid(backbone: Backbone, readout_frames: int) -> tuple[int, int, int]:
    """The (t, h, w) grid the readout sees: the common time length, the backbone's own space."""
    _, h, w = backbone.geometry.grid
    return (readout_frames, h, w)


def build_backbone(ref: ReferenceConfig, fraction: float, device: str | torch.device = "cpu") -> Backbone:
    """The backbone a reference entry names, read at its layer (module docstring), on `device`.
    Weights must be at hand (ensure_weights ran at preflight)."""
    e = ref.entry
    clip = MAEConfig(
        encoder=e.shape or ViTShape(8, 1, 8, 1),
        frames=ref.frames,
        size=ref.resolution,
        tubelet=ref.tubelet,
    )
    if e.source == "pixels":
        return PixelsBackbone(clip)
    if e.source == "hf":
        norm = (tuple(e.mean), tuple(e.std)) if e.mean else None
        return load_hf(e.id, fraction, e.frames, e.resolution, norm, e.layer, e.trust_remote_code, device)
    if e.source == "random":
        enc = random_encoder(clip, e.seed)
        return EncoderBackbone(
            enc.to(device), e.layer if e.layer is not None else enc.feature_block(fraction)
        )
    if e.source == "fourds":
        from models.fourds import convert, read_npz

        state, cfg = convert(read_npz(Path(e.path)), e.size, e.path)
        enc = Encoder(cfg)
        enc.load_state_dict(state)
        blocks = e.layer if e.layer is not None else fourds_layer(cfg.encoder.depth, fraction)
        return EncoderBackbone(enc.to(device), blocks)
    from models.export import load_encoder

    enc, _ = load_encoder(e.path, device)
    return EncoderBackbone(enc, e.layer if e.layer is not None else enc.feature_block(fraction))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def ensure_weights(ref: ReferenceConfig, say=print) -> None:
    """Preflight for one reference: its weights at hand (a local dir, the HF cache, or downloaded
    once now when the hub is reachable), its code trusted only if the entry says so. BackboneError
    (one line, exit 2) otherwise, before anything starts."""
    e = ref.entry
    if e.source in ("fourds", "export"):
        if not Path(e.path).exists():
            raise BackboneError(f"reference {e.name!r}: no such {e.source} path {e.path}")
        return
    if e.source != "hf":
        return
    config = hf_config(ref)
    if getattr(config, "auto_map", None) and not e.trust_remote_code:
        raise BackboneError(
            f"reference {e.name!r}: {e.id} ships its own code; run it only with trust_remote_code: true"
        )
    hf_family(config)
    if Path(e.id).is_dir():
        return
    if cached_weights(e.id):
        return
    if offline():
        raise BackboneError(fetch_hint(e.name, e.id, "HF_HUB_OFFLINE is set"))
    from huggingface_hub import snapshot_download

    say(f"reference {e.name}: downloading {e.id} from the Hugging Face hub (once, into its cache)")
    try:
        snapshot_download(e.id, allow_patterns=WEIGHT_FILES)  # tqdm progress bars
    except Exception as err:
        raise BackboneError(fetch_hint(e.name, e.id, type(err).__name__)) from None


def cached_weights(model_id: str) -> bool:
    """Whether the HF cache holds weights for model_id (never touches the network)."""
    from huggingface_hub import snapshot_download

    try:
        snap = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not in the cache at all
        return False
    return any(snap.glob("*.safetensors")) or any(snap.glob("*.bin"))


WEIGHT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]


def fetch_hint(name: str, model_id: str, why: str) -> str:
    fetch = f"huggingface-cli download {model_id}"
    return f"reference {name!r}: {model_id} is not at hand ({why}); fetch it: {fetch}"


def hf_config(ref: ReferenceConfig):
    """The model's config from a local dir or the cache, fetched when the hub is reachable."""
    import transformers

    e = ref.entry
    local = Path(e.id).is_dir() or offline()
    try:
        return transformers.AutoConfig.from_pretrained(
            e.id, local_files_only=local, trust_remote_code=e.trust_remote_code
        )
    except ValueError as err:  # transformers refuses code it was not told to trust
        if "trust_remote_code" in str(err):
            raise BackboneError(
                f"reference {e.name!r}: {e.id} ships its own code; run it only with trust_remote_code: true"
            ) from None
        raise BackboneError(f"reference {e.name!r}: {e.id}: {err}") from None
    except OSError as err:
        if Path(e.id).is_dir():
            raise BackboneError(
                f"reference {e.name!r}: {e.id} holds no transformers config ({err})"
            ) from None
        raise BackboneError(
            fetch_hint(e.name, e.id, "not found offline" if local else "hub unreachable")
        ) from None
