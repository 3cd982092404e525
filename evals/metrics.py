"""Eval metrics, re-implemented in numpy from the standard definitions
(TAP-Vid, the standard monocular-depth errors, relative camera pose, box IoU, top-k).

Shapes in comments: B clips (videos), N points / tracks, T frames, M samples.
Every function returns plain floats keyed by the names the sweep logs as
`eval/<task>/<name>`; `contracts.tasks.higher_is_better(name)` says which way each one points.
With `per_clip=True` it returns the same names as `ClipSums` instead: each metric as
per-clip sums whose ratio is the metric, which is what `bootstrap_draws` resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

DELTAS = (1, 2, 4, 8, 16)  # TAP-Vid thresholds, in pixels of a 256x256 frame
TAPVID_SIZE = 256


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b with nan where b == 0 (a video with nothing to evaluate drops out of the mean)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.maximum(b, 1e-12), np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


# ------------------------------------------------------------------ standard errors


@dataclass(frozen=True)
class ClipSums:
    """One metric as per-clip sums over M clips: the metric is sum(num) / sum(den) (its square root
    when `root`). A mean over clips has den 1 per clip (0 for a clip with nothing to score); a metric
    pooled over pixels or (object, frame) pairs has each clip's sum and count."""

    num: np.ndarray  # (M,)
    den: np.ndarray  # (M,)
    root: bool = False

    def value(self) -> float:
        d = float(np.sum(self.den))
        v = float(np.sum(self.num)) / d if d > 0 else float("nan")
        return float(np.sqrt(v)) if self.root else v


def clip_mean(values: np.ndarray) -> ClipSums:
    """Per-clip values (M,), nan where a clip has nothing to score -> their mean as ClipSums."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    return ClipSums(np.where(ok, v, 0.0), ok.astype(np.float64))


def bootstrap_draws(
    parts: dict[str, ClipSums], resamples: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Each metric recomputed on `resamples` resamples of the clips (with replacement) -> (resamples,)
    per name. One (resamples, M) matrix of clip counts, shared by every metric: a few ms for M = 128.
    The same seed draws the same resamples, so draws of two readouts of one test set are paired."""
    if not parts:
        return {}
    names = list(parts)
    M = len(parts[names[0]].num)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, M, size=(resamples, M)) + M * np.arange(resamples)[:, None]
    counts = np.bincount(idx.ravel(), minlength=resamples * M).reshape(resamples, M).astype(np.float64)
    num = counts @ np.stack([np.asarray(parts[k].num, np.float64) for k in names], 1)  # (resamples, K)
    den = counts @ np.stack([np.asarray(parts[k].den, np.float64) for k in names], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    root = np.array([parts[k].root for k in names])
    v[:, root] = np.sqrt(v[:, root])
    return {k: v[:, i] for i, k in enumerate(names)}


def draws_se(draws: np.ndarray) -> float:
    """The bootstrap standard error: the spread of the draws (resamples with nothing to score left out)."""
    d = np.asarray(draws, np.float64)
    d = d[np.isfinite(d)]
    return float(d.std(ddof=1)) if d.size > 1 else float("nan")


def bootstrap_se(parts: dict[str, ClipSums], resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """The standard error of every metric of `parts`, from a bootstrap over clips."""
    return {k: draws_se(d) for k, d in bootstrap_draws(parts, resamples, seed).items()}


# ------------------------------------------------------------------ point tracking


def eval_frames(query_frame: np.ndarray, T: int, query_mode: str = "first") -> np.ndarray:
    """query_frame (B, N) int -> which frames are scored (B, N, T) bool.

    "first": frames after the query frame; "strided": every frame but the query frame.
    """
    t = np.arange(T)
    q = np.asarray(query_frame)[..., None]
    if query_mode == "first":
        return t > q
    if query_mode == "strided":
        return t != q
    raise ValueError(f"query_mode must be 'first' or 'strided', not {query_mode!r}")


def tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str = "first",
    size: float = TAPVID_SIZE,
    per_clip: bool = False,
) -> dict[str, float] | dict[str, ClipSums]:
    """TAP-Vid point-tracking metrics, computed per video and then averaged over videos.

    query_points (B, N, 3) as (t, y, x); gt/pred_occluded (B, N, T) bool;
    gt/pred_tracks (B, N, T, 2) as (x, y) in pixels of a `size` x `size` frame,
    rescaled here to the 256x256 frame the thresholds are defined for.

    Returns oa, delta_avg (<delta_avg), aj, and per threshold pts_within_<d>, jaccard_<d>.
    """
    scale = TAPVID_SIZE / size
    gt_tracks, pred_tracks = np.asarray(gt_tracks) * scale, np.asarray(pred_tracks) * scale
    visible, pred_visible = ~np.asarray(gt_occluded, bool), ~np.asarray(pred_occluded, bool)
    evaluated = eval_frames(
        np.asarray(query_points)[..., 0].round().astype(int), visible.shape[-1], query_mode
    )

    def per_video(x: np.ndarray) -> np.ndarray:  # (B, N, T) bool -> (B,) counts over evaluated frames
        return (x & evaluated).sum(axis=(1, 2))

    out = {"oa": _div(per_video(visible == pred_visible), per_video(np.ones_like(visible)))}  # (B,) per video
    sq_dist = ((pred_tracks - gt_tracks) ** 2).sum(-1)  # (B, N, T)
    within_avg, jaccard_avg = [], []
    for d in DELTAS:
        within = sq_dist < d**2
        frac_within = _div(per_video(within & visible), per_video(visible))  # (B,)
        tp = within & visible & pred_visible
        fp = pred_visible & (~visible | ~within)
        jaccard = _div(per_video(tp), per_video(visible) + per_video(fp))  # (B,)
        out[f"pts_within_{d}"], out[f"jaccard_{d}"] = frac_within, jaccard
        within_avg.append(frac_within)
        jaccard_avg.append(jaccard)
    out["delta_avg"] = np.mean(within_avg, axis=0)
    out["aj"] = np.mean(jaccard_avg, axis=0)
    return {k: clip_mean(v) if per_clip else _nanmean(v) for k, v in out.items()}


# ------------------------------------------------------------------ depth


def depth_metrics(
    gt: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None, per_clip: bool = False
) -> dict[str, float] | dict[str, ClipSums]:
    """Standard monocular-depth errors pooled over all valid pixels of all frames.

    gt, pred (...) metric depths of the same shape (per_clip: (M, ...), clips first); valid
    defaults to finite gt > 0. Predictions are clamped to a tiny positive value so the log and
    ratios stay defined.
    """
    gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    if valid is None:
        valid = np.isfinite(gt) & (gt > 0)
    sums = _depth_sums(gt, pred, np.asarray(valid, bool))
    # Pooled = the per-clip sums summed: one pass over the pixels, without indexing the valid ones
    # out (4096 test clips of 8x32x32: ~1.7 s against ~2.6 s), equal up to rounding.
    return sums if per_clip else {k: s.value() for k, s in sums.items()}


def _depth_sums(gt: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> dict[str, ClipSums]:
    """depth_metrics as per-clip sums over each clip's valid pixels, and their counts."""
    M = gt.shape[0]
    valid = valid.reshape(M, -1)
    # Invalid pixels become g = p = 1: no error, and a ratio of 1, inside every delta threshold (their
    # count is taken off), so no sum needs masking again.
    g = np.where(valid, gt.reshape(M, -1), 1.0)
    p = np.where(valid, np.maximum(pred.reshape(M, -1), 1e-6), 1.0)
    n = valid.sum(1).astype(np.float64)
    d, ratio = g - p, np.maximum(g / p, p / g)
    sums = {
        "abs_rel": ((np.abs(d) / g).sum(1), False),
        "sq_rel": ((d * d / g).sum(1), False),
        "rmse": ((d * d).sum(1), True),
        "rmse_log": (((np.log(g) - np.log(p)) ** 2).sum(1), True),
    }
    sums |= {f"delta{k}": ((ratio < 1.25**k).sum(1) - (valid.shape[1] - n), False) for k in (1, 2, 3)}
    return {k: ClipSums(v, n, root) for k, (v, root) in sums.items()}


# ------------------------------------------------------------------ camera pose


def relative_pose(extrinsics: np.ndarray, ref: int = 0) -> np.ndarray:
    """World->camera extrinsics (..., T, 4, 4) -> camera_ref->camera_t transforms (..., T, 4, 4).

    A point X in frame `ref`'s camera coordinates lands at rel[t] @ X in frame t's.
    """
    E = np.asarray(extrinsics, np.float64)
    return E @ np.linalg.inv(E[..., ref : ref + 1, :, :])


def pose_vector(rel: np.ndarray) -> np.ndarray:
    """Relative pose (..., 4, 4) -> the 6-D vector (..., 6) the readout regresses and EPE compares:
    the rotation as an axis-angle vector in radians (3) followed by the translation (3)."""
    rel = np.asarray(rel, np.float64)
    lead = rel.shape[:-2]
    rotvec = Rotation.from_matrix(rel[..., :3, :3].reshape(-1, 3, 3)).as_rotvec().reshape(*lead, 3)
    return np.concatenate([rotvec, rel[..., :3, 3]], axis=-1)


def pose_matrix(vec: np.ndarray) -> np.ndarray:
    """Inverse of `pose_vector`: (..., 6) -> (..., 4, 4)."""
    vec = np.asarray(vec, np.float64)
    lead = vec.shape[:-1]
    out = np.zeros((*lead, 4, 4))
    out[..., :3, :3] = Rotation.from_rotvec(vec[..., :3].reshape(-1, 3)).as_matrix().reshape(*lead, 3, 3)
    out[..., :3, 3] = vec[..., 3:]
    out[..., 3, 3] = 1.0
    return out


def pose_metrics(
    pred_rel: np.ndarray, gt_rel: np.ndarray, per_clip: bool = False
) -> dict[str, float] | dict[str, ClipSums]:
    """Errors of predicted vs true relative poses (M, ..., 4, 4), averaged over every pair
    (per_clip: over each clip's pairs, as a mean over clips).

    epe: mean Euclidean distance between the 6-D `pose_vector`s (axis-angle ⊕ translation);
    rot_err_deg: angle of the rotation taking the prediction to the truth;
    trans_err_deg: angle between the translation directions (0 when both are zero,
    90 when only one is: a zero vector says nothing about direction).
    """
    pred_rel, gt_rel = np.asarray(pred_rel, np.float64), np.asarray(gt_rel, np.float64)
    epe = np.linalg.norm(pose_vector(pred_rel) - pose_vector(gt_rel), axis=-1)  # (M,)
    R = np.swapaxes(pred_rel[..., :3, :3], -1, -2) @ gt_rel[..., :3, :3]
    cos_r = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1) / 2, -1, 1)
    tp, tg = pred_rel[..., :3, 3], gt_rel[..., :3, 3]
    np_, ng = np.linalg.norm(tp, axis=-1), np.linalg.norm(tg, axis=-1)
    zero_p, zero_g = np_ < 1e-9, ng < 1e-9
    cos_t = (tp * tg).sum(-1) / np.maximum(np_ * ng, 1e-18)
    cos_t = np.where(zero_p & zero_g, 1.0, np.where(zero_p | zero_g, 0.0, np.clip(cos_t, -1, 1)))
    out = {
        "epe": epe,
        "rot_err_deg": np.degrees(np.arccos(cos_r)),
        "trans_err_deg": np.degrees(np.arccos(cos_t)),
    }
    if per_clip:
        return {k: clip_mean(v.reshape(len(v), -1).mean(1)) for k, v in out.items()}
    return {k: float(v.mean()) for k, v in out.items()}


# ------------------------------------------------------------------ boxes and classes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (..., 4) given as x0, y0, x1, y1 -> (...)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih

    def area(x):
        return np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)

    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_metrics(
    pred: np.ndarray, gt: np.ndarray, present: np.ndarray, per_clip: bool = False
) -> dict[str, float] | dict[str, ClipSums]:
    """Mean IoU over the (track, frame) pairs where the object is present.

    pred, gt (..., 4) x0y0x1y1; present (...) bool (per_clip: (M, ...), clips first).
    """
    present = np.asarray(present, bool)
    iou = box_iou(pred, gt)
    if per_clip:
        M = len(present)
        num = np.where(present, iou, 0.0).reshape(M, -1).sum(1)
        return {"iou": ClipSums(num, present.reshape(M, -1).sum(1).astype(np.float64))}
    return {"iou": float(iou[present].mean()) if present.any() else float("nan")}


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, per_clip: bool = False
) -> dict[str, float] | dict[str, ClipSums]:
    """logits (B, C), labels (B,) -> top1, and top5 when there are more than 5 classes."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    order = np.argsort(-logits, axis=-1)
    hits = {"top1": order[:, 0] == labels}
    if logits.shape[-1] > 5:
        hits["top5"] = (order[:, :5] == labels[:, None]).any(-1)
    return {k: clip_mean(v.astype(np.float64)) if per_clip else float(np.mean(v)) for k, v in hits.items()}
