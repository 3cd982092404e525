"""Eval datasets on disk, read into the clip contract of `evals.task.Clips` for one task.

    load_splits(EvalData(format="tapvid", path=...), "point_tracking", frames=16, size=224,
                sizes={"train": 256, "val": 64, "test": 64})
        -> ({"train": Clips, "val": Clips, "test": Clips}, {"dataset", "split", "num_classes"?})

Every clip is `frames` frames from a video's start, `stride` apart (action clips: centred), the last
frame repeated when a video is short, at size x size: the short side scaled to `size` and the centre
cropped, with every geometric label mapped the same way (readers.Fit: intrinsics, boxes, depth).
TAP-Vid follows its benchmark instead: frames are resized to size x size without a crop, tracks
scaled with them (the metrics rescale thresholds to the 256 x 256 frame, evals.metrics).

Splits: the dataset's own split files or folders where it has them (a val split, when it has none,
is drawn from train by `seed`); otherwise one deterministic split of every item by `seed`, in
proportion to the requested sizes. `info["split"]` says which, and evals record it. A split holds
at most its requested number of clips, and at least one (else DataError).

Pickles are read with readers.load_pickle (arrays, dicts, lists, strings, numbers only).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contracts.spec import EvalData
from contracts.tasks import EVAL_FORMATS
from data4d.readers import (
    VIDEO_EXTS,
    ClassFolder,
    DataError,
    RealEstate10K,
    RGBDScenes,
    SomethingSomethingV2,
    SOTSequences,
    load_pickle,
)

SPLITS = ("train", "val", "test")
TAPVID_QUERY_STRIDE = 5  # TAP-Vid's "strided" protocol: a query every 5 frames where the point is visible
# The Clips fields each task reads (evals/<task>.py), in the shapes SyntheticWorld gives them.
KEYS = {
    "point_tracking": ("video", "tracks", "occluded", "query_frame"),
    "camera_pose": ("video", "extrinsics", "intrinsics"),
    "depth": ("video", "depth", "intrinsics"),
    "box_tracking": ("video", "boxes", "box_visible"),
    "action": ("video", "label"),
}


@dataclass
class Source:
    """A dataset before reading: item handles per own split ("all" when it has none), and a reader."""

    items: dict[str, list]
    read: Callable[[object, int], dict]  # (handle, index within its split) -> one clip
    num_classes: int | None = None


def load_splits(
    data: EvalData, task: str, frames: int, size: int, sizes: dict[str, int]
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """The train/val/test Clips of `data` for `task` at the encoder's frames and size, and what they are."""
    if data.format not in EVAL_FORMATS:
        raise DataError(f"unknown eval data format {data.format!r}; formats: {', '.join(EVAL_FORMATS)}")
    if EVAL_FORMATS[data.format] != task:
        raise DataError(f"format {data.format!r} is data for {EVAL_FORMATS[data.format]}, not {task}")
    root = Path(data.path)
    if not root.exists():
        raise DataError(f"{root}: eval data not found (format {data.format})")
    src = SOURCES[data.format](root, data, frames, size)
    items, rule = split_items(src.items, data.seed, sizes)
    out = {}
    for s in SPLITS:
        picked = items[s][: sizes[s]]
        clips = [src.read(h, i) for i, h in enumerate(picked)]
        out[s] = {k: np.stack([np.asarray(c[k]) for c in clips]) for k in KEYS[task]}
    info = {"dataset": data.label, "split": rule}
    if src.num_classes is not None:
        info["num_classes"] = src.num_classes
    return out, info


def split_items(own: dict[str, list], seed: int, sizes: dict[str, int]) -> tuple[dict[str, list], str]:
    """(items per split, how they were split): own splits as they are, a missing val drawn from
    train by seed, or everything split by seed in proportion to `sizes`."""
    rng = np.random.default_rng(seed)
    if "all" in own:
        pool = [own["all"][i] for i in rng.permutation(len(own["all"]))]
        total = sum(sizes.values())
        n_val = max(1, round(len(pool) * sizes["val"] / total))
        n_test = max(1, round(len(pool) * sizes["test"] / total))
        items = {"val": pool[:n_val], "test": pool[n_val : n_val + n_test], "train": pool[n_val + n_test :]}
        rule = f"seed {seed}"
    else:
        items = dict(own)
        rule = "dataset splits"
        if "val" not in items:
            train = [items["train"][i] for i in rng.permutation(len(items.get("train", [])))]
            n_val = max(1, round(len(train) * sizes["val"] / (sizes["train"] + sizes["val"])))
            items["val"], items["train"] = train[:n_val], train[n_val:]
            rule += f"; val drawn from train by seed {seed}"
    empty = [s for s in SPLITS if not items.get(s)]
    if empty:
        n = {s: len(items.get(s, [])) for s in SPLITS}
        raise DataError(
            f"eval data too small: split(s) {', '.join(empty)} empty ({n}); every split needs a clip"
        )
    return items, rule


def _window(n: int, frames: int, stride: int) -> np.ndarray:
    """Frame indices of a clip from the start: 0, stride, ..., the last frame repeated past the end."""
    return np.minimum(np.arange(frames) * stride, max(n - 1, 0))


def _repeat_last(clip: dict, frames: int, keys: Sequence[str]) -> dict:
    """Pad time axes (axis 0) of `keys` to `frames` by repeating the last entry."""
    for k in keys:
        a = np.asarray(clip[k])
        if len(a) < frames:
            clip[k] = np.concatenate([a, np.repeat(a[-1:], frames - len(a), 0)])
    return clip


def _own_dirs(root: Path, names: dict[str, str]) -> dict[str, Path]:
    """{our split: folder} for the dataset's split folders that exist under root."""
    return {ours: root / theirs for theirs, ours in names.items() if (root / theirs).is_dir()}


# ------------------------------------------------------------------ point tracking: TAP-Vid


def tapvid(root: Path, data: EvalData, frames: int, size: int) -> Source:
    """TAP-Vid: one pickle of {name: video} (DAVIS, RGB-Stacking) or a folder of shard pickles each holding
    a list of videos (Kinetics); each video {'video': (T, H, W, 3) uint8 or JPEG bytes per frame,
    'points': (N, T, 2) normalised x, y, 'occluded': (N, T) bool}. No split files: split by seed."""
    files = sorted(root.glob("*.pkl")) if root.is_dir() else [root]
    if not files:
        raise DataError(f"{root}: no TAP-Vid pickles (*.pkl)")
    items = []
    for f in files:
        d = load_pickle(f)
        if not isinstance(d, dict | list):
            raise DataError(f"{f}: a TAP-Vid pickle holds a dict or list of videos, not {type(d).__name__}")
        for name, v in sorted(d.items()) if isinstance(d, dict) else enumerate(d):
            if not isinstance(v, dict) or not {"video", "points", "occluded"} <= set(v):
                raise DataError(f"{f}: entry {name!r} lacks 'video', 'points' or 'occluded'")
            items.append((f, name, v))

    def read(handle, i: int) -> dict:
        return tapvid_clip(*handle, frames, size, data.stride, data.query_mode, data.points, data.seed)

    return Source({"all": items}, read)


def _frame(f, where: str) -> np.ndarray:
    from PIL import Image

    if isinstance(f, bytes | bytearray):
        try:
            return np.asarray(Image.open(io.BytesIO(f)).convert("RGB"))
        except OSError as e:
            raise DataError(f"{where}: bad JPEG frame ({e})") from e
    return np.asarray(f, np.uint8)


def tapvid_clip(
    path, name, v: dict, frames: int, size: int, stride: int, mode: str, points: int, seed: int
) -> dict:
    """One TAP-Vid video -> a clip of `points` queries (drawn by seed; repeated when fewer exist)."""
    from PIL import Image

    where = f"{path}: entry {name!r}"
    try:
        pts, occ = np.asarray(v["points"], np.float64), np.asarray(v["occluded"], bool)
        T = len(v["video"])
        ok = pts.ndim == 3 and pts.shape[2] == 2 and occ.shape == pts.shape[:2] and occ.shape[1] == T
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: bad points/occluded ({e})") from e
    if not ok:
        raise DataError(f"{where}: points {pts.shape}, occluded {occ.shape} and {T} video frames disagree")
    idx = _window(T, frames, stride)
    video = []
    for k in idx:
        img = _frame(v["video"][k], where)
        if img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"{where}: frame {k} has shape {img.shape}, expected (H, W, 3)")
        video.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)))
    pts, occ = pts[:, idx], occ[:, idx]
    visible = ~occ
    if mode == "first":
        queries = [(n, int(visible[n].argmax())) for n in range(len(occ)) if visible[n].any()]
    else:
        queries = [
            (n, q) for n in range(len(occ)) for q in range(0, frames, TAPVID_QUERY_STRIDE) if visible[n, q]
        ]
    if not queries:
        raise DataError(f"{where}: no point is visible in the clip's {frames} frames")
    rng = np.random.default_rng([seed, zlib.crc32(str(name).encode())])  # per video, stable across runs
    pick = (
        np.sort(rng.choice(len(queries), points, replace=False))
        if len(queries) >= points
        else np.resize(np.arange(len(queries)), points)
    )
    n, q = np.array([queries[k] for k in pick]).T
    return {
        "video": np.stack(video),
        "tracks": (pts[n] * size).astype(np.float32),
        "occluded": occ[n],
        "query_frame": q.astype(np.int64),
    }


# ------------------------------------------------------------------ camera pose: RealEstate10K


def realestate10k(root: Path, data: EvalData, frames: int, size: int) -> Source:
    """RealEstate10K: <root>/{train,test}/<sequence>.txt (line 1 the URL, then `timestamp fx fy cx cy 0 0`
    + a 3x4 world->camera pose per frame, intrinsics normalised), frames in <sequence>/<timestamp>.jpg
    beside each file (or frames/<sequence>/). Without train/ and test/, every .txt is split by seed."""
    own = {s: sorted(d.glob("*.txt")) for s, d in _own_dirs(root, {"train": "train", "test": "test"}).items()}
    files = sorted(root.rglob("*.txt")) if root.is_dir() else [root]
    if not own and not files:
        raise DataError(f"{root}: no RealEstate10K camera files (*.txt)")

    def read(f, i: int) -> dict:
        clip = RealEstate10K(f, frames=frames, stride=data.stride, resolution=size)[0]
        if "video" not in clip:
            raise DataError(f"{f}: no frames folder ({f.with_suffix('')} or {f.parent / 'frames' / f.stem})")
        return _repeat_last(clip, frames, ("video", "extrinsics"))

    return Source(own or {"all": files}, read)


# ------------------------------------------------------------------ depth: ScanNet


def scannet(root: Path, data: EvalData, frames: int, size: int) -> Source:
    """ScanNet export: <root>/<scene>/{color/<n>.jpg, depth/<n>.png (16-bit mm, 0 = invalid),
    intrinsic/intrinsic_depth.txt}; splits from scannetv2_train.txt / scannetv2_val.txt (scene ids, one
    a line) at the root when present (val scenes are the test split), else by seed."""
    if not root.is_dir():
        raise DataError(f"{root}: ScanNet root must be a folder of scene folders")
    scenes = sorted(p for p in root.iterdir() if (p / "color").is_dir())
    if not scenes:
        raise DataError(f"{root}: no scene folder with a color/ folder")
    lists = {"train": root / "scannetv2_train.txt", "test": root / "scannetv2_val.txt"}
    own = {}
    if all(f.exists() for f in lists.values()):
        by_name = {p.name: p for p in scenes}
        for s, f in lists.items():
            names = f.read_text().split()
            missing = [n for n in names if n not in by_name]
            if missing:
                raise DataError(f"{f}: scene {missing[0]!r} is listed but has no folder under {root}")
            own[s] = [by_name[n] for n in names]

    def read(scene, i: int) -> dict:
        clip = RGBDScenes(scene, frames=frames, stride=data.stride, resolution=size)[0]
        return _repeat_last(clip, frames, ("video", "depth"))

    return Source(own or {"all": scenes}, read)


# ------------------------------------------------------------------ action: SSv2, class folders


def ssv2(root: Path, data: EvalData, frames: int, size: int) -> Source:
    """Something-Something v2: labels.json (template -> id), train.json and validation.json (the test
    split here; val is drawn from train), videos/<id>.webm. See readers.SomethingSomethingV2."""
    if not root.is_dir():
        raise DataError(f"{root}: Something-Something v2 root must be a folder")
    sets = {
        s: SomethingSomethingV2(root, split=name, frames=frames, resolution=size, stride=data.stride)
        for s, name in (("train", "train"), ("test", "validation"))
    }
    own = {s: [(ds, i) for i in range(len(ds))] for s, ds in sets.items()}
    k = max(sets["train"].classes.values(), default=-1) + 1

    def read(handle, i: int) -> dict:
        ds, j = handle
        return ds[j]

    return Source(own, read, num_classes=k)


def folder(root: Path, data: EvalData, frames: int, size: int) -> Source:
    """<root>/<class_name>/<video>, or <root>/{train,val,test}/<class_name>/<video> for own splits."""
    if not root.is_dir():
        raise DataError(f"{root}: class folder not found")
    dirs = _own_dirs(root, {"train": "train", "val": "val", "test": "test"})
    own = {s: ClassFolder.find(d) for s, d in dirs.items()} if {"train", "test"} <= set(dirs) else {}
    items = own or {"all": ClassFolder.find(root)}
    found = [it for v in items.values() for it in v]
    if not found:
        raise DataError(f"{root}: no videos ({', '.join(VIDEO_EXTS)}) in class folders <class>/<video>")
    classes = sorted({c for _, c in found})

    def read(handle, i: int) -> dict:
        return ClassFolder([handle], classes, frames, size, data.stride)[0]

    return Source(items, read, num_classes=len(classes))


# ------------------------------------------------------------------ box tracking: GOT-10k, LaSOT


def got10k(root: Path, data: EvalData, frames: int, size: int) -> Source:
    """GOT-10k: <root>/{train,val}/<sequence>/ (val is the test split here: GOT-10k's test boxes are
    withheld), or a folder of sequences split by seed. See readers.SOTSequences."""
    dirs = _own_dirs(root, {"train": "train", "val": "test"})
    own = {s: SOTSequences.find(d) for s, d in dirs.items()} if len(dirs) == 2 else {}
    return _sot(root, own, data, frames, size)


def lasot(root: Path, data: EvalData, frames: int, size: int) -> Source:
    """LaSOT: <root>/<class>/<class>-<k>/{img/, groundtruth.txt, full_occlusion.txt, out_of_view.txt};
    testing_set.txt at the root (sequence names, one a line) is the test split, the rest train."""
    own = {}
    listing = root / "testing_set.txt"
    if listing.is_file():
        test = set(listing.read_text().split())
        seqs = SOTSequences.find(root)
        own = {"train": [s for s in seqs if s.name not in test], "test": [s for s in seqs if s.name in test]}
    return _sot(root, own, data, frames, size)


def _sot(root: Path, own: dict, data: EvalData, frames: int, size: int) -> Source:
    seqs = SOTSequences.find(root) if root.is_dir() else []
    if not seqs:
        raise DataError(f"{root}: no tracking sequence (a folder with groundtruth.txt)")

    def read(seq, i: int) -> dict:
        return SOTSequences([seq], frames, data.stride, size)[0]

    return Source(own or {"all": seqs}, read)


SOURCES: dict[str, Callable[[Path, EvalData, int, int], Source]] = {
    "tapvid": tapvid,
    "realestate10k": realestate10k,
    "scannet": scannet,
    "ssv2": ssv2,
    "folder": folder,
    "got10k": got10k,
    "lasot": lasot,
}
assert set(SOURCES) == set(EVAL_FORMATS), "data4d.evalsets must read exactly contracts.tasks.EVAL_FORMATS"
