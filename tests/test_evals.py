"""Readouts, tasks, the eval runner and its feature cache, on tiny encoder exports."""

import math

import numpy as np
import pytest
import torch

from contracts.tasks import higher_is_better
from evals.cache import ArrayCache
from evals.readout import AttentionReadout, at_every_time, fourier_features, token_centres
from evals.run import TASKS, evaluate, evaluate_many
from models.export import ExportError, save_encoder
from models.mae import Encoder, MAEConfig, ViTShape

# The headline names each task must report (the lead logs them as eval/<task>/<name>).
NAMES = {
    "point_tracking": {"aj", "delta_avg", "oa", "aj_strided", "delta_avg_strided", "oa_strided"},
    "camera_pose": {"epe", "rot_err_deg", "trans_err_deg"},
    "depth": {"abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3"},
    "box_tracking": {"iou"},
    "action": {"top1", "top5"},
}
TINY = dict(width=32, heads=2, epochs=2, batch_size=8, train_clips=16, val_clips=8, test_clips=8)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP spin-waits make 2 threads far slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_export(path, width=32, depth=2, seed=0):
    cfg = MAEConfig(
        encoder=ViTShape(width, depth, 4 * width, 2),
        decoder=ViTShape(32, 1, 64, 2),
        frames=8,
        size=32,
        tubelet=(2, 8, 8),
        mask_ratio=0.75,
    )
    torch.manual_seed(seed)
    save_encoder(Encoder(cfg).state_dict(), {"model": cfg.to_dict(), "name": "tiny"}, path)
    return path


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("export"))


def readout(**kw):
    from contracts.spec import Readout

    return Readout(**(TINY | kw))


def test_readout_shapes_and_zero_start():
    feats = torch.randn(2, 4 * 16, 24)  # (B, N, D) on a 4x4x4 grid
    learned = AttentionReadout(24, (4, 4, 4), out_dim=5, num_queries=7, width=16, heads=2)
    assert learned(feats).shape == (2, 7, 5)
    cond = fourier_features(torch.rand(2, 3, 3))  # 3 query points (t, y, x)
    assert cond.shape == (2, 3, 3 * 17)
    conditioned = AttentionReadout(24, (4, 4, 4), out_dim=5, cond_dim=cond.shape[-1], width=16, heads=2)
    out = conditioned(feats, cond)
    assert out.shape == (2, 3, 5) and torch.all(out == 0)  # zero output layer: untrained = the prior
    out.sum().backward()
    assert conditioned.out.weight.grad.abs().sum() > 0


def test_sampled_queries_read_their_place_and_joint_heads_read_every_query():
    feats = torch.randn(2, 64, 24)  # (B, N, D) on a 4x4x4 grid
    grid = feats.view(2, 4, 4, 4, 24).permute(0, 4, 1, 2, 3)
    at_tokens = torch.nn.functional.grid_sample(
        grid, token_centres((4, 4, 4))[None, :, :, None].expand(2, -1, -1, -1, -1), align_corners=False
    )  # what AttentionReadout samples
    assert torch.allclose(at_tokens[..., 0, 0].transpose(1, 2), feats, atol=1e-6)
    where = at_every_time(torch.tensor([[0.25, -0.75]]), 4)  # (1, 4, 3): one place at each time step
    assert torch.allclose(where[:, :, :2], torch.tensor([0.25, -0.75]).expand(1, 4, 2))
    assert torch.allclose(where[0, :, 2], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    head = AttentionReadout(
        24, (4, 4, 4), out_dim=5, num_queries=64, width=16, heads=2, samples=1, joint=True
    )
    out = head(feats, where=token_centres((4, 4, 4)).expand(2, -1, -1, -1))
    assert out.shape == (2, 1, 5)
    out.sum().backward()
    assert head.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("feat_dim", [8, 96])  # narrower than the readout (sample first), and wider
@pytest.mark.parametrize("sample_width", [0, 4])  # one matrix over all points, or one per point first
def test_sampled_features_are_projected_as_if_sampled_first(feat_dim, sample_width):
    """Whichever order the readout takes (the first projection before or after grid_sample), its
    input from the samples is the projection of the features sampled at `where`, written out here."""
    B, Q, K, W = 2, 5, 3, 16
    feats, where = torch.randn(B, 64, feat_dim), torch.rand(B, Q, K, 3) * 2.2 - 1.1  # some off the grid
    head = AttentionReadout(
        feat_dim, (4, 4, 4), out_dim=5, num_queries=Q, width=W, heads=2, samples=K, sample_width=sample_width
    )
    grid = feats.view(B, 4, 4, 4, feat_dim).permute(0, 4, 1, 2, 3)
    at = torch.nn.functional.grid_sample(
        grid, where[:, :, :, None], align_corners=False, padding_mode="border"
    )
    at = at[..., 0].permute(0, 2, 3, 1)  # (B, Q, K, D)
    if sample_width:
        point, last = head.sample[1], head.sample[3]
        expected = last(point(at).flatten(2))
    else:
        expected = head.sample(at.flatten(2))
    got = head.sampled(feats, where)
    assert got.shape == (B, Q, W)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()
    got.square().sum().backward()
    assert (head.sample[-1] if sample_width else head.sample).weight.grad.abs().sum() > 0


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_trains_and_reports_its_metrics_and_baselines(export, task):
    seen = []
    m = evaluate(export, task, readout=readout(), progress=seen.append)
    assert NAMES[task] <= set(m)
    assert {f"baseline_{k}" for k in NAMES[task]} <= set(m)
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values()), m
    assert [p["epoch"] for p in seen] == [1, 2] and all(math.isfinite(p["loss"]) for p in seen)
    names = [k for k in m if not k.endswith("_se")]
    assert {f"{k}_se" for k in names} == set(m) - set(names)  # every metric and baseline has an se
    assert all(m[f"{k}_se"] >= 0 for k in names)
    for k in NAMES[task]:
        higher_is_better(k)  # every name has a direction


def test_finetune_trains_the_encoder_too(export):
    frozen = evaluate(export, "depth", readout=readout())
    tuned = evaluate(export, "depth", mode="finetune", readout=readout(finetune_lr_scale=1.0))
    assert math.isfinite(tuned["abs_rel"]) and tuned["abs_rel"] != frozen["abs_rel"]
    assert tuned["baseline_abs_rel"] == frozen["baseline_abs_rel"]


def test_readout_seeds_average_and_add_their_spread_to_the_standard_error(export):
    one = [evaluate(export, "action", readout=readout(seed=s)) for s in (0, 1)]
    both = evaluate(export, "action", readout=readout(seeds=2))
    assert both["top1"] == pytest.approx((one[0]["top1"] + one[1]["top1"]) / 2)
    spread = (one[0]["top1"] - one[1]["top1"]) ** 2 / 4  # the sample variance of two seeds, over n = 2
    assert both["top1_se"] ** 2 >= spread - 1e-12
    assert both["baseline_top1_se"] == one[0]["baseline_top1_se"]  # the baseline has no readout


def test_cached_features_match_recomputed_ones_and_are_computed_once(tmp_path, monkeypatch):
    import evals.run as run

    cache = ArrayCache()
    monkeypatch.setattr(run, "CACHE", cache)
    path = make_export(tmp_path / "e")
    calls = []
    real = run.encoder_features
    monkeypatch.setattr(run, "encoder_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    both = evaluate_many(path, ["depth", "camera_pose"], readout=readout())
    assert len(calls) == 3  # one pass per split, shared by both tasks and every epoch
    again = evaluate(path, "depth", readout=readout())
    assert len(calls) == 3 and again == both["depth"]
    recomputed = evaluate(path, "depth", readout=readout(), cache_features=False)
    assert len(calls) > 3
    for k, v in both["depth"].items():
        assert recomputed[k] == pytest.approx(v, rel=1e-4), k


def test_cache_is_bounded_and_spills_to_npy(tmp_path):
    cache = ArrayCache(max_bytes=1000, spill_dir=tmp_path)
    a, b = np.arange(100, dtype=np.float32), np.ones(200, dtype=np.float32)  # 400 and 800 bytes
    cache.get("a", lambda: {"x": a})
    cache.get("b", lambda: {"x": b})  # over budget: "a" (least recent) spills
    assert list(cache.memory) == ["b"] and cache.bytes <= 1000
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0], allow_pickle=False), a)
    got = cache.get("a", lambda: pytest.fail("recomputed a spilled entry"))
    assert np.array_equal(got["x"], a) and cache.hits == 1
    big = cache.get(
        "big", lambda: {"x": np.zeros(1000, np.float32)}
    )  # larger than the budget: straight to disk
    assert "big" not in cache.memory and big["x"].shape == (1000,)


def test_rendered_arrays_are_kept_on_disk_for_other_processes_and_versioned(tmp_path):
    from evals.cache import DiskArrays

    calls = []

    def render():
        calls.append(1)
        return {"video": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": np.array([3, 4])}

    first = DiskArrays(tmp_path, "v1").get("clips/a", render)
    again = DiskArrays(tmp_path, "v1").get("clips/a", render)  # another process: a new instance
    assert len(calls) == 1 and set(again) == {"video", "labels"}
    assert all(np.array_equal(first[k], again[k]) and again[k].dtype == first[k].dtype for k in first)
    DiskArrays(tmp_path, "v2").get("clips/a", render)  # another renderer: rendered again
    DiskArrays(tmp_path, "v1").get("clips/b", render)  # another key: rendered again
    assert len(calls) == 3
    big = DiskArrays(tmp_path / "small", "v1", max_bytes=10)
    big.get("clips/a", render)
    big.get("clips/a", render)  # over the budget: never kept
    assert len(calls) == 5 and not (tmp_path / "small").exists()


def test_clear_errors(export, tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(export, "segmentation")
    with pytest.raises(ValueError, match="mode"):
        evaluate(export, "depth", mode="linear")
    with pytest.raises(ExportError):
        evaluate(tmp_path / "nothing", "depth")


def test_depth_readout_beats_the_mean_depth_baseline(export):
    """Even a random-init encoder's features carry appearance, which predicts depth (sky vs ground vs
    objects)."""
    m = evaluate(
        export,
        "depth",
        readout=readout(
            width=64, epochs=20, lr=3e-3, batch_size=16, train_clips=128, val_clips=32, test_clips=64
        ),
    )
    assert m["abs_rel"] < 0.9 * m["baseline_abs_rel"], m


def test_point_tracking_reads_frames_in_order_and_tunes_its_visibility_threshold():
    from contracts.spec import World
    from evals.point_tracking import PointTracking
    from evals.run import load_clips

    cfg = MAEConfig(
        encoder=ViTShape(32, 2, 128, 2),
        decoder=ViTShape(32, 1, 64, 2),
        frames=8,
        size=32,
        tubelet=(2, 8, 8),
        mask_ratio=0.75,
    )
    clips = load_clips(cfg, World(), "val", 4)
    task = PointTracking(cfg, clips)
    M, P, T = clips["occluded"].shape
    assert task.num_queries == P * cfg.grid[0]
    # Outputs that decode to the true tracks, with p(visible) 0.3 for visible points and 0.1 for occluded
    # ones.
    q = task.inputs(clips)
    per_frame = torch.zeros(M, P, T, 4)
    per_frame[..., :2] = (q["tracks"] - q["query_xy"][:, :, None]) / task.patch
    per_frame[..., 2] = torch.where(
        q["occluded"], math.log(0.9 / 0.1), math.log(0.7 / 0.3)
    )  # sigmoid(-x) = p
    per_frame[..., 3] = -30.0  # surely near
    out = per_frame.reshape(M, P * cfg.grid[0], -1)  # query (point, step) holds its step's frames
    assert task.metrics(out, clips)["aj"] == 0.0  # at the default threshold 0.5 nothing is reported visible
    task.tune(out, clips)
    assert 0.1 < task.threshold <= 0.3
    assert task.metrics(out, clips)["aj"] == pytest.approx(1.0) and task.metrics(out, clips)[
        "oa"
    ] == pytest.approx(1.0)
