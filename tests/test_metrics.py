"""Hand-worked cases for every eval metric: the numbers the definitions imply."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from contracts.tasks import higher_is_better
from evals.metrics import (
    ClipSums,
    bootstrap_se,
    box_metrics,
    classification_metrics,
    depth_metrics,
    pose_matrix,
    pose_metrics,
    pose_vector,
    relative_pose,
    tapvid_metrics,
)

B, N, T = 2, 6, 8


def tracks_case(seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(20, 230, size=(B, N, T, 2))
    occluded = np.zeros((B, N, T), bool)
    query = np.zeros((B, N, 3))
    query[..., 1:] = gt[:, :, 0, ::-1]  # (t, y, x)
    return query, occluded, gt


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_perfect_tracks_score_one(mode):
    q, occ, gt = tracks_case()
    m = tapvid_metrics(q, occ, gt, occ, gt, query_mode=mode)
    assert m["aj"] == 1 and m["delta_avg"] == 1 and m["oa"] == 1


def test_constant_three_pixel_offset():
    q, occ, gt = tracks_case()
    m = tapvid_metrics(q, occ, gt, occ, gt + np.array([3.0, 0.0]))
    # 9 < d^2 fails for d = 1, 2 and holds for 4, 8, 16.
    assert [m[f"pts_within_{d}"] for d in (1, 2, 4, 8, 16)] == [0, 0, 1, 1, 1]
    assert [m[f"jaccard_{d}"] for d in (1, 2, 4, 8, 16)] == [0, 0, 1, 1, 1]
    assert m["delta_avg"] == pytest.approx(0.6) and m["aj"] == pytest.approx(0.6) and m["oa"] == 1


def test_offset_is_measured_in_256_pixel_frames():
    """A 1.5-pixel error on a 32x32 clip is a 12-pixel error at 256: within 16 but not within 8."""
    q, occ, gt = tracks_case()
    m = tapvid_metrics(q / 8, occ, gt / 8, occ, gt / 8 + np.array([0.0, 1.5]), size=32)
    assert [m[f"pts_within_{d}"] for d in (1, 2, 4, 8, 16)] == [0, 0, 0, 0, 1]


def test_all_predicted_visible_when_half_are_occluded():
    q, occ, gt = tracks_case()
    occ[:, : N // 2, 1:] = True  # half the points hidden after the query frame
    m = tapvid_metrics(q, occ, gt, np.zeros_like(occ), gt)
    assert m["oa"] == pytest.approx(0.5)
    assert m["delta_avg"] == 1  # positions are right wherever the point is visible
    # TP = visible (V), FP = the V occluded-but-predicted-visible frames: V / (V + V).
    assert m["aj"] == pytest.approx(0.5) and m["jaccard_1"] == pytest.approx(0.5)


def test_first_mode_ignores_frames_before_the_query():
    q, occ, gt = tracks_case()
    q[..., 0] = 4
    pred = gt.copy()
    pred[:, :, :5] += 100  # wrong up to and including the query frame: not scored in "first" mode
    assert tapvid_metrics(q, occ, gt, occ, pred, query_mode="first")["aj"] == 1
    strided = tapvid_metrics(q, occ, gt, occ, pred, query_mode="strided")["aj"]
    assert strided == pytest.approx(3 / 7 / (1 + 4 / 7))  # TP 3 of 7 frames, FP 4: 3 / (7 + 4)


def test_depth_perfect_and_scaled():
    rng = np.random.default_rng(0)
    g = rng.uniform(0.5, 10, size=(4, 16, 16))
    m = depth_metrics(g, g)
    assert m["abs_rel"] == 0 and m["rmse"] == 0 and m["delta1"] == 1
    m = depth_metrics(g, 1.1 * g)
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["sq_rel"] == pytest.approx(np.mean(0.01 * g))
    assert m["rmse_log"] == pytest.approx(np.log(1.1))
    assert m["delta1"] == 1
    m = depth_metrics(g, 1.3 * g)
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0, 1, 1)


def test_depth_ignores_invalid_pixels():
    g = np.array([1.0, 2.0, 0.0, np.inf])
    m = depth_metrics(g, np.array([1.0, 2.0, 5.0, 7.0]))
    assert m["abs_rel"] == 0


def test_depth_pools_the_valid_pixels_of_every_clip():
    """Pooled and per-clip values against the definitions written out here over the valid pixels
    alone (gt 0 or inf, and pixels outside `valid`, are not scored)."""
    rng = np.random.default_rng(5)
    gt = rng.uniform(0.5, 10, (3, 4, 8, 8))
    gt[0, 0, :2] = 0.0
    gt[1, 2, 3] = np.inf
    pred = gt * rng.uniform(0.6, 1.6, gt.shape)
    pred[2, 1, 1, 1] = -3.0  # clamped to a tiny positive depth
    valid = np.isfinite(gt) & (gt > 0) & (rng.random(gt.shape) < 0.9)
    g, p = gt[valid], np.maximum(pred[valid], 1e-6)
    ratio = np.maximum(g / p, p / g)
    want = {
        "abs_rel": np.mean(np.abs(g - p) / g),
        "sq_rel": np.mean((g - p) ** 2 / g),
        "rmse": np.sqrt(np.mean((g - p) ** 2)),
        "rmse_log": np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
        **{f"delta{k}": np.mean(ratio < 1.25**k) for k in (1, 2, 3)},
    }
    got = depth_metrics(gt, pred, valid)
    assert got == pytest.approx(want, rel=1e-12)
    parts = depth_metrics(gt, pred, valid, per_clip=True)
    for i in range(3):
        gi, pi = gt[i][valid[i]], np.maximum(pred[i][valid[i]], 1e-6)
        assert parts["delta1"].num[i] == np.sum(np.maximum(gi / pi, pi / gi) < 1.25)
        assert parts["delta1"].den[i] == valid[i].sum()
        assert parts["abs_rel"].num[i] == pytest.approx(np.sum(np.abs(gi - pi) / gi), rel=1e-12)


def random_extrinsics(seed=0, T=5):
    rng = np.random.default_rng(seed)
    E = np.tile(np.eye(4), (T, 1, 1))
    E[:, :3, :3] = Rotation.random(T, random_state=seed).as_matrix()
    E[:, :3, 3] = rng.normal(size=(T, 3))
    return E


def test_pose_identity_and_perfect_have_zero_error():
    eye = np.tile(np.eye(4), (3, 1, 1))
    assert pose_metrics(eye, eye) == {"epe": 0, "rot_err_deg": 0, "trans_err_deg": 0}
    rel = relative_pose(random_extrinsics())
    assert np.allclose(rel[0], np.eye(4))
    m = pose_metrics(rel[1:], rel[1:])
    assert m["epe"] == pytest.approx(0, abs=1e-9) and m["rot_err_deg"] == pytest.approx(0, abs=1e-4)
    assert m["trans_err_deg"] == pytest.approx(0, abs=1e-4)


def test_pose_known_rotation_and_translation():
    gt = np.eye(4)[None]
    pred = np.eye(4)[None].copy()
    pred[0, :3, :3] = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    m = pose_metrics(pred, gt)
    assert m["rot_err_deg"] == pytest.approx(30)
    assert m["epe"] == pytest.approx(np.radians(30))
    gt = np.eye(4)[None].copy()
    gt[0, :3, 3] = [1, 0, 0]
    pred = np.eye(4)[None].copy()
    pred[0, :3, 3] = [0, 2, 0]
    m = pose_metrics(pred, gt)
    assert m["trans_err_deg"] == pytest.approx(90) and m["epe"] == pytest.approx(np.sqrt(5))


def test_pose_vector_round_trips():
    rel = relative_pose(random_extrinsics(1))
    assert np.allclose(pose_matrix(pose_vector(rel)), rel)


def test_box_iou():
    gt = np.array([[[0, 0, 10, 10], [0, 0, 10, 10]]], float)  # (1 track, 2 frames, 4)
    assert box_metrics(gt, gt, np.ones((1, 2), bool))["iou"] == 1
    shifted = gt + np.array([5, 0, 5, 0])  # half its width: overlap 50, union 150
    assert box_metrics(shifted, gt, np.ones((1, 2), bool))["iou"] == pytest.approx(1 / 3)
    far = gt + 100
    assert box_metrics(np.stack([gt[0, 0], far[0, 1]])[None], gt, np.array([[True, False]]))["iou"] == 1


def test_classification():
    logits = np.eye(10)[[0, 1, 2, 3]]
    labels = np.array([0, 1, 2, 9])
    m = classification_metrics(logits, labels)
    assert m["top1"] == 0.75
    assert m["top5"] == 0.75  # label 9 is tied-last, not in the top 5
    assert "top5" not in classification_metrics(np.eye(5), np.arange(5))


def test_directions():
    for name in ("aj", "delta_avg", "oa", "aj_strided", "iou", "top1", "top5", "delta1", "baseline_aj"):
        assert higher_is_better(name), name
    for name in (
        "epe",
        "epe_all",
        "rot_err_deg",
        "trans_err_deg",
        "abs_rel",
        "sq_rel",
        "rmse",
        "rmse_log",
        "baseline_abs_rel",
    ):
        assert not higher_is_better(name), name


# ------------------------------------------------------------------ standard errors


def test_bootstrap_se_is_zero_for_a_constant_metric():
    se = bootstrap_se({"c": ClipSums(np.full(128, 0.7), np.ones(128))})
    assert se["c"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_bootstrap_se_of_a_bernoulli_mean_is_sqrt_p_1_minus_p_over_n(p):
    n = 128
    hits = np.zeros(n)
    hits[: round(p * n)] = 1.0  # top-1 hits of n test clips
    logits = np.eye(2)[(1 - hits).astype(int)]  # class 0 scores highest exactly on the hits
    se = bootstrap_se(classification_metrics(logits, np.zeros(n, int), per_clip=True))
    assert se["top1"] == pytest.approx(np.sqrt(p * (1 - p) / n), rel=0.10)


def test_bootstrap_is_fast_and_seeded():
    import time

    rng = np.random.default_rng(0)
    parts = {f"m{i}": ClipSums(rng.random(128), np.ones(128)) for i in range(20)}
    t0 = time.perf_counter()
    a = bootstrap_se(parts, seed=3)
    assert time.perf_counter() - t0 < 0.5
    assert a == bootstrap_se(parts, seed=3) and a != bootstrap_se(parts, seed=4)


def test_per_clip_sums_give_back_every_metric():
    """Each metric's ClipSums (what the bootstrap resamples) has the metric's own value."""
    rng = np.random.default_rng(1)
    q, occ, gt = tracks_case()
    occ[0, :3, 2:] = True
    pred_occ = rng.random(occ.shape) < 0.3
    cases = [
        (tapvid_metrics, (q, occ, gt, pred_occ, gt + rng.normal(scale=3, size=gt.shape))),
        (depth_metrics, (rng.uniform(0.5, 10, (3, 4, 8, 8)), rng.uniform(0.5, 10, (3, 4, 8, 8)))),
        (pose_metrics, tuple(relative_pose(random_extrinsics(s))[None, 1:] for s in (2, 3))),
        (
            box_metrics,
            (
                *(rng.uniform(0, 5, (3, 2, 4, 4)) + [0, 0, 5, 5] for _ in range(2)),
                rng.random((3, 2, 4)) < 0.7,
            ),
        ),
        (classification_metrics, (rng.normal(size=(9, 10)), rng.integers(0, 10, 9))),
    ]
    for fn, args in cases:
        whole, parts = fn(*args), fn(*args, per_clip=True)
        assert set(parts) == set(whole), fn.__name__
        for k, v in whole.items():
            assert parts[k].value() == pytest.approx(v, rel=1e-9, abs=1e-12), (fn.__name__, k)
