"""Readers for real video data, returning the same clip dict as the synthetic world.

Fields a dataset does not have are absent. Pixel coordinates use the world's
convention (pixel centres at +0.5); resizing scales the short side to
`resolution` and centre-crops, and every geometric field (tracks, boxes,
intrinsics) is mapped through the same transform.

Pretraining sources (`VideoFolder`, `WebDataset`) have `read(i, rng)`: rng picks
the start frame, so PretrainStream can make it a function of (seed, step, rank).
Eval sets (`TapVid`, `RGBDScenes`, `RealEstate10K`, `BoxTracks`,
`SomethingSomethingV2`) are plain sequences of clips.

Every missing or corrupt file raises DataError naming the file.
"""

import glob
import io
import json
import pickle
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contracts.errors import UserError

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".gif")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class DataError(UserError):
    """A data file is missing, unreadable or not in the expected format (the message names it)."""


# ------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class Fit:
    """Scale the short side of an (h, w) image to `size`, then centre-crop to size x size."""

    h: int
    w: int
    size: int | None

    @property
    def scaled(self):  # (height, width) after scaling, before the crop
        if self.size is None:
            return self.h, self.w
        s = self.size / min(self.h, self.w)
        return max(self.size, round(self.h * s)), max(self.size, round(self.w * s))

    @property
    def offset(self):  # (top, left) of the crop in scaled pixels
        if self.size is None:
            return 0, 0
        sh, sw = self.scaled
        return (sh - self.size) // 2, (sw - self.size) // 2

    def xy(self, xy):
        """Map pixel coordinates (..., 2) from the source image to the output."""
        (sh, sw), (top, left) = self.scaled, self.offset
        return xy * np.array([sw / self.w, sh / self.h]) - np.array([left, top])

    def intrinsics(self, K):
        (sh, sw), (top, left) = self.scaled, self.offset
        sx, sy = sw / self.w, sh / self.h
        K = np.asarray(K, np.float64)
        out = np.array(
            [[K[0, 0] * sx, 0, K[0, 2] * sx - left], [0, K[1, 1] * sy, K[1, 2] * sy - top], [0, 0, 1]]
        )
        return out.astype(np.float32)

    def boxes(self, boxes):
        """(..., 4) x0, y0, x1, y1 -> mapped and clipped to the output; also whether any area is left."""
        b = self.xy(boxes.reshape(*boxes.shape[:-1], 2, 2)).reshape(boxes.shape)
        hi = self.size if self.size is not None else np.array([self.w, self.h, self.w, self.h])
        b = np.clip(b, 0, hi)
        return b.astype(np.float32), (b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])

    def image(self, img, resample=None):
        """PIL image -> (size, size[, C]) array."""
        from PIL import Image

        if self.size is None:
            return np.asarray(img)
        (sh, sw), (top, left) = self.scaled, self.offset
        img = img.resize((sw, sh), Image.BILINEAR if resample is None else resample)
        return np.asarray(img)[top : top + self.size, left : left + self.size]


# ------------------------------------------------------------------ files


def _json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read JSON ({e})") from e


def _image(path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from e


def _frame_count(container, stream):
    if stream.frames:
        return stream.frames
    rate = stream.average_rate or stream.guessed_rate
    if container.duration and rate:  # containers like webm do not store a frame count
        return int(container.duration / 1e6 * float(rate))
    return 0


def decode_video(src, name, frames=None, size=None, stride=1, start="center", rng=None):
    """Decode `frames` frames `stride` apart from a video file or bytes: (T, size, size, 3) uint8.

    start: "center" (evaluation), an int, or "random" (drawn from rng). A video too short
    for the clip repeats its last frame. Returns (video, Fit of the source frames).
    """
    import av

    if isinstance(src, bytes | bytearray):
        src = io.BytesIO(src)
    out, fit = [], None
    try:
        with av.open(src) as container:
            stream = container.streams.video[0]
            n = _frame_count(container, stream)
            span = (frames - 1) * stride + 1 if frames else n
            room = max(n - span, 0)
            if start == "center":
                first = room // 2
            elif start == "random":
                first = int(rng.integers(0, room + 1))
            else:
                first = int(start)
            for k, frame in enumerate(container.decode(stream)):
                if k < first or (k - first) % stride:
                    continue
                fit = fit or Fit(frame.height, frame.width, size)
                sh, sw = fit.scaled
                (top, left), s = fit.offset, size or max(sh, sw)
                img = frame.to_ndarray(format="rgb24", width=sw, height=sh)  # swscale: fast resize
                out.append(img[top : top + s, left : left + s] if size else img)
                if frames and len(out) == frames:
                    break
    except (av.error.FFmpegError, OSError, IndexError, ValueError) as e:
        raise DataError(f"{name}: cannot decode video ({e})") from e
    if not out:
        raise DataError(f"{name}: no video frames")
    while frames and len(out) < frames:
        out.append(out[-1])
    return np.stack(out), fit


def _expand(pattern):
    """Shard pattern -> sorted paths: a folder (all .tar in it), a glob, or braces like {000..009}."""
    p = Path(pattern)
    if p.is_dir():
        return sorted(str(x) for x in p.glob("*.tar"))
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if m:
        lo, hi = m.groups()
        pats = [
            pattern[: m.start()] + str(k).zfill(len(lo)) + pattern[m.end() :]
            for k in range(int(lo), int(hi) + 1)
        ]
        return [x for pat in pats for x in _expand(pat)]
    return sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]


# ------------------------------------------------------------------ pretraining sources


class VideoFolder:
    """Every video file under `path` (recursively), in sorted order."""

    def __init__(self, path, frames=16, resolution=224, stride=1):
        self.path, self.frames, self.resolution, self.stride = Path(path), frames, resolution, stride
        if not self.path.is_dir():
            raise DataError(f"{path}: video folder not found")
        self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in VIDEO_EXTS)
        if not self.files:
            raise DataError(f"{path}: no video files ({', '.join(VIDEO_EXTS)})")

    def __len__(self):
        return len(self.files)

    def read(self, i, rng=None):
        f = self.files[i]
        start = "random" if rng is not None else "center"
        video, _ = decode_video(str(f), f, self.frames, self.resolution, self.stride, start, rng)
        return {"video": video, "path": str(f)}

    def __getitem__(self, i):
        return self.read(i)


class WebDataset:
    """WebDataset tar shards: members grouped by key (name up to the first dot of the basename).

    A sample's video is its first member with a video extension; `.cls` gives an int label.
    Shards are indexed once (member offsets), then each clip is one seek and read.
    """

    def __init__(self, pattern, frames=16, resolution=224, stride=1):
        self.frames, self.resolution, self.stride = frames, resolution, stride
        self.shards = _expand(str(pattern))
        if not self.shards:
            raise DataError(f"{pattern}: no shards")
        self.samples = []  # (shard, key, {ext: (offset, size)})
        for shard in self.shards:
            groups = {}
            try:
                with tarfile.open(shard) as tar:
                    for m in tar:
                        if m.isfile():
                            d, base = m.name.rpartition("/")[::2]
                            key, _, ext = base.partition(".")
                            groups.setdefault(f"{d}/{key}", {})[ext.lower()] = (m.offset_data, m.size)
            except (OSError, tarfile.TarError) as e:
                raise DataError(f"{shard}: cannot read tar shard ({e})") from e
            self.samples += [
                (shard, k, g) for k, g in groups.items() if any("." + e in VIDEO_EXTS for e in g)
            ]
        if not self.samples:
            raise DataError(f"{pattern}: no video samples in {len(self.shards)} shard(s)")

    def __len__(self):
        return len(self.samples)

    def _member(self, shard, where):
        try:
            with open(shard, "rb") as f:
                f.seek(where[0])
                return f.read(where[1])
        except OSError as e:
            raise DataError(f"{shard}: {e}") from e

    def read(self, i, rng=None):
        shard, key, g = self.samples[i]
        ext = next(e for e in g if "." + e in VIDEO_EXTS)
        name = f"{shard}:{key}.{ext}"
        start = "random" if rng is not None else "center"
        video, _ = decode_video(
            self._member(shard, g[ext]), name, self.frames, self.resolution, self.stride, start, rng
        )
        clip = {"video": video, "key": key}
        if "cls" in g:
            clip["label"] = int(self._member(shard, g["cls"]).decode().strip())
        return clip

    def __getitem__(self, i):
        return self.read(i)


# ------------------------------------------------------------------ eval sets


class _NumpyOnly(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol <= 2 stores the array's bytes (str -> bytes, no side effects)
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed")


def load_pickle(path):
    """Restricted unpickling (arrays, dicts, lists, str, bytes, numbers) of a data file."""
    try:
        with open(path, "rb") as f:
            return _NumpyOnly(f).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: cannot load pickle ({e})") from e


class TapVid:
    """TAP-Vid point tracking pickles: {name: {'video', 'points', 'occluded'}} or a list of such.

    'points' are (N, T, 2) normalised (x, y); 'video' is (T, H, W, 3) uint8 or a list of JPEG
    bytes (the Kinetics set). With `resolution`, frames are resized to resolution x resolution
    without a crop, as the TAP-Vid benchmark does.
    """

    def __init__(self, path, resolution=None):
        self.path, self.resolution = Path(path), resolution
        data = load_pickle(path)
        items = sorted(data.items()) if isinstance(data, dict) else list(enumerate(data))
        self.items = []
        for name, v in items:
            if not isinstance(v, dict) or not {"video", "points", "occluded"} <= set(v):
                raise DataError(f"{path}: entry {name!r} lacks 'video', 'points' or 'occluded'")
            self.items.append((name, v))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        name, v = self.items[i]
        video = v["video"]
        if len(video) and isinstance(video[0], bytes):
            try:
                video = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in video])
            except OSError as e:
                raise DataError(f"{self.path}: entry {name!r}: bad JPEG frame ({e})") from e
        video = np.asarray(video, np.uint8)
        T, H, W = video.shape[:3]
        if self.resolution:
            R = self.resolution
            video = np.stack([np.asarray(Image.fromarray(f).resize((R, R), Image.BILINEAR)) for f in video])
            H = W = R
        occ = np.asarray(v["occluded"], bool)
        if occ.shape != np.asarray(v["points"]).shape[:2] or occ.shape[1] != T:
            raise DataError(f"{self.path}: entry {name!r}: points/occluded/video shapes disagree")
        return {
            "video": video,
            "tracks": (np.asarray(v["points"], np.float64) * [W, H]).astype(np.float32),
            "occluded": occ,
            "query_frame": (~occ).argmax(1),  # first visible frame ("query first" protocol)
            "name": str(name),
        }


def _numbered(folder, exts):
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in exts]
    return sorted(files, key=lambda p: (int(p.stem) if p.stem.isdigit() else float("inf"), p.stem))


class RGBDScenes:
    """RGB-D frame folders in the ScanNet export layout, one scene per folder (or root is one scene):

    color/<n>.jpg, depth/<n>.png (16-bit, millimetres, 0 = invalid), intrinsic/intrinsic_depth.txt
    (or intrinsic_color.txt, 4x4), optional pose/<n>.txt (4x4 camera -> world). Colour is resized
    to the depth image, and intrinsics are those of the returned images.
    """

    def __init__(self, root, frames=None, stride=1, resolution=None):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: RGB-D folder not found")
        self.scenes = (
            [root]
            if (root / "color").is_dir()
            else sorted(p for p in root.iterdir() if (p / "color").is_dir())
        )
        if not self.scenes:
            raise DataError(f"{root}: no scene with a color/ folder")
        self.frames, self.stride, self.resolution = frames, stride, resolution

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, i):
        from PIL import Image

        scene = self.scenes[i]
        colors = _numbered(scene / "color", IMAGE_EXTS)[:: self.stride][: self.frames]
        if not colors:
            raise DataError(f"{scene / 'color'}: no frames")
        video, depth, poses = [], [], []
        for c in colors:
            dpath = scene / "depth" / f"{c.stem}.png"
            d = _image(dpath)
            if d.mode not in ("I;16", "I"):
                raise DataError(f"{dpath}: depth must be a 16-bit PNG, got mode {d.mode}")
            fit = Fit(d.height, d.width, self.resolution)
            video.append(fit.image(_image(c).convert("RGB").resize(d.size, Image.BILINEAR)))
            depth.append(fit.image(Image.fromarray(np.asarray(d, np.float32) / 1000), Image.NEAREST))
            ppath = scene / "pose" / f"{c.stem}.txt"
            if ppath.exists():
                poses.append(_matrix(ppath, (4, 4)))
        K = _intrinsics(scene, d.size)
        clip = {
            "video": np.stack(video),
            "depth": np.stack(depth).astype(np.float32),
            "intrinsics": fit.intrinsics(K),
        }
        if len(poses) == len(colors):
            with np.errstate(invalid="ignore"):
                clip["extrinsics"] = np.stack(
                    [np.linalg.inv(p) if np.isfinite(p).all() else np.full((4, 4), np.nan) for p in poses]
                ).astype(np.float32)
        return clip


def _matrix(path, shape):
    try:
        m = np.loadtxt(path, dtype=np.float64)
        return m.reshape(shape)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: expected a {shape[0]}x{shape[1]} matrix ({e})") from e


def _intrinsics(scene, depth_size):
    depth_k = scene / "intrinsic" / "intrinsic_depth.txt"
    if depth_k.exists():
        return _matrix(depth_k, (4, 4))[:3, :3]
    color_k = scene / "intrinsic" / "intrinsic_color.txt"
    if not color_k.exists():
        raise DataError(f"{depth_k}: intrinsics not found (nor {color_k.name})")
    # colour intrinsics: rescale to the depth image the colour was resized to
    first = _numbered(scene / "color", IMAGE_EXTS)[0]
    w, h = _image(first).size
    K = _matrix(color_k, (4, 4))[:3, :3].copy()
    K[0] *= depth_size[0] / w
    K[1] *= depth_size[1] / h
    return K


class RealEstate10K:
    """RealEstate10K camera files: line 1 the video URL, then per frame
    `timestamp fx fy cx cy k1 k2 p00 ... p23` (normalised intrinsics, 3x4 world -> camera pose).

    Frames, when present, are in a folder named after the file's stem (beside it or under
    `frames/`), one `<timestamp>.jpg|png` per line.
    """

    def __init__(self, root, frames=None, stride=1, resolution=None):
        root = Path(root)
        self.files = [root] if root.is_file() else sorted(root.rglob("*.txt"))
        if not self.files:
            raise DataError(f"{root}: no RealEstate10K camera files (*.txt)")
        self.frames, self.stride, self.resolution = frames, stride, resolution

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        f = self.files[i]
        try:
            lines = f.read_text().splitlines()
            rows = np.array([[float(x) for x in line.split()] for line in lines[1:] if line.strip()])
        except (OSError, ValueError) as e:
            raise DataError(f"{f}: cannot parse camera file ({e})") from e
        if rows.ndim != 2 or rows.shape[1] != 19:
            raise DataError(
                f"{f}: expected 19 numbers per camera line, got {rows.shape[-1] if rows.size else 0}"
            )
        rows = rows[:: self.stride][: self.frames]
        T = len(rows)
        ext = np.tile(np.eye(4), (T, 1, 1))
        ext[:, :3] = rows[:, 7:].reshape(T, 3, 4)
        fx, fy, cx, cy = rows[0, 1:5]
        Kn = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        clip = {
            "url": lines[0].strip(), "timestamps": rows[:, 0].astype(np.int64),
            "extrinsics": ext.astype(np.float32), "intrinsics_normalized": Kn.astype(np.float32),
        }  # fmt: skip
        folder = next((d for d in (f.with_suffix(""), f.parent / "frames" / f.stem) if d.is_dir()), None)
        if folder is not None:
            images = []
            for ts in clip["timestamps"]:
                path = next((folder / f"{ts}{e}" for e in IMAGE_EXTS if (folder / f"{ts}{e}").exists()), None)
                if path is None:
                    raise DataError(f"{folder}: no frame for timestamp {ts}")
                img = _image(path).convert("RGB")
                fit = Fit(img.height, img.width, self.resolution)
                images.append(fit.image(img))
            clip["video"] = np.stack(images)
            clip["intrinsics"] = fit.intrinsics(Kn * [[img.width], [img.height], [1]])
        return clip


class BoxTracks:
    """Box tracks: one JSON per video,
    {"video": "<file beside the JSON>", "objects": [{"id", "category", "boxes": [[x0, y0, x1, y1] | null per frame]}]}
    in source pixels. Returns boxes (O, T, 4) and box_visible (O, T) in output pixels.
    """

    def __init__(self, root, frames=None, stride=1, resolution=None):
        root = Path(root)
        self.files = [root] if root.is_file() else sorted(root.rglob("*.json"))
        if not self.files:
            raise DataError(f"{root}: no box-track JSON files")
        self.frames, self.stride, self.resolution = frames, stride, resolution

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        f = self.files[i]
        ann = _json(f)
        try:
            video_path = f.parent / ann["video"]
            objects = ann["objects"]
            raw = [[b if b is not None else [np.nan] * 4 for b in o["boxes"]] for o in objects]
            boxes = np.array(raw, np.float64).reshape(len(objects), -1, 4)  # (O, T_all, 4)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{f}: not a box-track file ({e})") from e
        video, fit = decode_video(
            str(video_path), video_path, self.frames, self.resolution, self.stride, start=0
        )
        T = len(video)
        idx = np.arange(T) * self.stride
        pick = np.full((len(objects), T, 4), np.nan)
        ok = idx < boxes.shape[1]
        pick[:, ok] = boxes[:, idx[ok]]
        out, vis = fit.boxes(np.nan_to_num(pick))
        vis &= np.isfinite(pick).all(-1)
        return {
            "video": video, "boxes": np.where(vis[..., None], out, 0).astype(np.float32), "box_visible": vis,
            "object_ids": [o.get("id", k) for k, o in enumerate(objects)],
            "categories": [o.get("category") for o in objects],
        }  # fmt: skip


class SomethingSomethingV2:
    """Something-Something v2: labels JSON (template name -> id), a split JSON list of
    {"id", "label", "template"}, and videos <id>.webm. Clips are centre-sampled.
    """

    LABELS = ("labels.json", "something-something-v2-labels.json", "labels/labels.json")
    VIDEOS = ("20bn-something-something-v2", "videos", ".")

    def __init__(self, root, split="validation", frames=16, resolution=224, stride=2):
        root = Path(root)
        self.frames, self.resolution, self.stride = frames, resolution, stride
        labels = next((root / n for n in self.LABELS if (root / n).exists()), root / self.LABELS[0])
        names = (f"{split}.json", f"something-something-v2-{split}.json", f"labels/{split}.json")
        listing = next((root / n for n in names if (root / n).exists()), root / names[0])
        self.classes = {k: int(v) for k, v in _json(labels).items()}
        self.videos = next((root / n for n in self.VIDEOS if (root / n).is_dir()), root)
        self.items = []
        for entry in _json(listing):
            try:
                name = entry["template"].replace("[", "").replace("]", "")
                self.items.append((str(entry["id"]), self.classes[name], entry["template"]))
            except (KeyError, TypeError) as e:
                raise DataError(
                    f"{listing}: bad entry {entry!r} (unknown template or missing field: {e})"
                ) from e

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        vid, label, template = self.items[i]
        path = self.videos / f"{vid}.webm"
        if not path.exists():
            raise DataError(f"{path}: video not found")
        video, _ = decode_video(str(path), path, self.frames, self.resolution, self.stride)
        return {"video": video, "label": label, "template": template, "id": vid}
