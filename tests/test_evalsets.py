"""Eval datasets on disk: a fixture per format written here in that format's own layout (not by our
readers), read into the clip contract with hand-checked labels, and scored end to end by
`sweep eval --data`."""

import io
import json
import os
import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from contracts.spec import EvalData
from contracts.tasks import TASKS
from data4d.evalsets import KEYS, load_splits, split_items
from data4d.readers import DataError
from evals.depth import valid_depth
from models.export import save_encoder
from models.mae import Encoder, MAEConfig, ViTShape
from orchestrator.cli import app

runner = CliRunner()
F, S = 4, 16  # the tiny encoder's frames and resolution
SIZES = {"train": 8, "val": 2, "test": 2}
SPEC = """\
name: tiny
ladder: [{name: a, width: 16, depth: 1, mlp: 32, heads: 2, steps: 1}]
evals:
  readout: {width: 16, heads: 2, epochs: 1, batch_size: 4, train_clips: 8, val_clips: 2, test_clips: 2}
  task_readout: {point_tracking: {epochs: 1}}
"""


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    cfg = MAEConfig(
        encoder=ViTShape(16, 1, 32, 2),
        decoder=ViTShape(16, 1, 32, 2),
        frames=F,
        size=S,
        tubelet=(2, 8, 8),
        mask_ratio=0.5,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("export")
    save_encoder(Encoder(cfg).state_dict(), {"model": cfg.to_dict(), "name": "tiny"}, d)
    (d.parent / "spec.yaml").write_text(SPEC)
    return d


def sweep_eval(export, task, data, *extra):
    return runner.invoke(
        app,
        [
            "eval",
            str(export),
            "--task",
            task,
            "--data",
            data,
            "--spec",
            str(export.parent / "spec.yaml"),
            *extra,
        ],
    )


def write_video(path, n=6, h=20, w=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264" if path.suffix == ".mp4" else "libvpx", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 20 * k, np.uint8), format="rgb24")
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def jpeg(img) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    return buf.getvalue()


def load(fmt, path, task, **kw):
    return load_splits(EvalData(format=fmt, path=str(path), **kw), task, F, S, SIZES)


# ------------------------------------------------------------------ point tracking: TAP-Vid


def tapvid_video(rng, T=6, H=20, W=30, N=5):
    occ = rng.random((N, T)) < 0.3
    occ[:, 0] = False
    points = rng.random((N, T, 2))
    return {"video": rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8), "points": points, "occluded": occ}


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    """TAP-Vid DAVIS: one pickle of {video name: {'video', 'points', 'occluded'}}."""
    rng = np.random.default_rng(0)
    videos = {f"v{k}": tapvid_video(rng) for k in range(6)}
    videos["v0"]["points"][2, 1] = [0.25, 0.5]  # a track point to check by hand
    videos["v0"]["occluded"][2] = [True, False, False, True, False, False]  # first visible at frame 1
    path = tmp_path_factory.mktemp("davis") / "tapvid_davis.pkl"
    path.write_bytes(pickle.dumps(videos))
    return path, videos


def test_tapvid_davis_query_first_and_hand_checked_track(davis):
    path, videos = davis
    clips, info = load("tapvid", path, "point_tracking", points=8, seed=3)
    assert info == {"dataset": "tapvid:tapvid_davis", "split": "seed 3"}
    assert {k: len(v["video"]) for k, v in clips.items()} == {"train": 4, "val": 1, "test": 1}
    for c in clips.values():
        assert set(c) == set(KEYS["point_tracking"])
        assert c["video"].shape[1:] == (F, S, S, 3) and c["tracks"].shape[1:] == (8, F, 2)
        m, p = np.indices(c["query_frame"].shape)
        assert not c["occluded"][m, p, c["query_frame"]].any()  # every query is on a visible point
    # v0 in the 16x16 frame (TAP-Vid resizes without a crop): point 2 at frame 1 is (0.25, 0.5) * 16
    from data4d.evalsets import tapvid_clip

    clip = tapvid_clip(path, "v0", videos["v0"], F, S, 1, "first", 5, 0)
    row = next(i for i in range(5) if np.allclose(clip["tracks"][i], videos["v0"]["points"][2, :F] * S))
    np.testing.assert_allclose(clip["tracks"][row, 1], [4.0, 8.0])
    assert clip["query_frame"][row] == 1  # the first frame where point 2 is visible
    again, _ = load("tapvid", path, "point_tracking", points=8, seed=3)
    np.testing.assert_array_equal(again["test"]["tracks"], clips["test"]["tracks"])  # deterministic


def test_tapvid_kinetics_shards_strided(tmp_path):
    """TAP-Vid Kinetics: shard pickles, each a list of videos whose frames are JPEG bytes."""
    rng = np.random.default_rng(1)
    for shard in range(2):
        vids = [tapvid_video(rng) for _ in range(3)]
        for v in vids:
            v["video"] = [jpeg(f) for f in v["video"]]
        (tmp_path / f"{shard:04d}_of_0002.pkl").write_bytes(pickle.dumps(vids))
    clips, info = load("tapvid", tmp_path, "point_tracking", points=6, query_mode="strided")
    q = np.concatenate([c["query_frame"] for c in clips.values()])
    assert set(np.unique(q)) <= {0} and sum(len(c["video"]) for c in clips.values()) == 6  # F=4 < stride 5


# ------------------------------------------------------------------ camera pose: RealEstate10K


def write_re10k(root, name, rng, T=5):
    lines = [f"https://www.youtube.com/watch?v={name}"]
    for t in range(T):
        pose = np.hstack([np.eye(3), rng.normal(size=(3, 1))])
        lines.append(" ".join(map(str, [1000 * t, 0.5, 0.6, 0.5, 0.5, 0, 0, *pose.ravel()])))
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 40, 3), 10 * t, np.uint8)).save(root / name / f"{1000 * t}.jpg")
    (root / f"{name}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def re10k(tmp_path_factory):
    root = tmp_path_factory.mktemp("RealEstate10K")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for k in range(n):
            write_re10k(root / split, f"{split}{k}", rng)
    return root


def test_realestate10k_intrinsics_after_resize_and_crop(re10k):
    clips, info = load("realestate10k", re10k, "camera_pose")
    assert info["split"] == "dataset splits; val drawn from train by seed 0"
    assert [len(clips[s]["video"]) for s in ("train", "val", "test")] == [2, 1, 2]
    # 40x20 frames: fx = 0.5 * 40 = 20 px, cx = 20, fy = 0.6 * 20 = 12, cy = 10; scaled by 16/20 -> 32x16,
    # cropped 8 px from the left: fx 16, cx 16 - 8 = 8, fy 9.6, cy 8.
    np.testing.assert_allclose(
        clips["test"]["intrinsics"][0], [[16, 0, 8], [0, 9.6, 8], [0, 0, 1]], rtol=1e-6
    )
    assert clips["test"]["extrinsics"].shape == (2, F, 4, 4) and clips["test"]["video"].shape == (
        2,
        F,
        S,
        S,
        3,
    )


# ------------------------------------------------------------------ depth: ScanNet


@pytest.fixture(scope="module")
def scannet(tmp_path_factory):
    root = tmp_path_factory.mktemp("scannet")
    names = [f"scene{k:04d}_00" for k in range(5)]
    for name in names:
        scene = root / name
        for d in ("color", "depth", "intrinsic"):
            (scene / d).mkdir(parents=True)
        K = np.array([[30.0, 0, 24, 0], [0, 31, 16, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", K)
        for t in range(5):
            Image.fromarray(np.full((64, 96, 3), 40 * t, np.uint8)).save(scene / "color" / f"{t}.jpg")
            mm = (1000 + 100 * t + 48 * np.arange(32)[:, None] + np.arange(48)).astype(np.uint16)
            mm[3, 11] = 0  # invalid depth
            Image.fromarray(mm).save(scene / "depth" / f"{t}.png")
    (root / "scannetv2_train.txt").write_text("\n".join(names[:3]) + "\n")
    (root / "scannetv2_val.txt").write_text("\n".join(names[3:]) + "\n")
    return root


def test_scannet_depth_pixel_and_intrinsics(scannet):
    clips, info = load("scannet", scannet, "depth")
    assert info["split"].startswith("dataset splits") and len(clips["test"]["video"]) == 2
    d = clips["test"]["depth"][
        0
    ]  # (F, 16, 16): 32x48 depth scaled by 1/2 to 16x24, cropped 4 px from the left
    assert d.shape == (F, S, S)
    # nearest resampling by 2 reads source pixel (2r + 1, 2c + 1) of the scaled-then-cropped grid:
    # output (0, 0) <- source row 1, column 2 * 4 + 1 = 9: 1000 + 48 * 1 + 9 mm in frame 0.
    assert d[0, 0, 0] == pytest.approx(1.057)
    assert d[1, 1, 1] == 0  # source (3, 11), invalid: it stays 0 (no interpolation with its neighbours) ...
    assert not valid_depth(d)[1, 1, 1] and valid_depth(d)[1, 1, 2]  # ... and is masked
    np.testing.assert_allclose(clips["test"]["intrinsics"][0], [[15, 0, 8], [0, 15.5, 8], [0, 0, 1]])


# ------------------------------------------------------------------ action: SSv2, class folders


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    labels = {"Pushing something from left to right": "0", "Putting something on a surface": "1"}
    (root / "labels.json").write_text(json.dumps(labels))
    templates = ["Pushing [something] from left to right", "Putting [something] on a surface"]
    for split, ids in (("train", range(4)), ("validation", range(10, 12))):
        items = [
            {"id": str(i), "label": "x", "template": templates[i % 2], "placeholders": ["a"]} for i in ids
        ]
        (root / f"{split}.json").write_text(json.dumps(items))
        for i in ids:
            write_video(root / "videos" / f"{i}.webm")
    return root


def test_ssv2_labels_and_splits(ssv2):
    clips, info = load("ssv2", ssv2, "action")
    assert info["num_classes"] == 2 and info["split"].startswith("dataset splits")
    assert clips["test"]["label"].tolist() == [0, 1] and clips["test"]["video"].shape == (2, F, S, S, 3)


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("actions")
    for c in ("jumping", "running"):
        for k in range(3):
            write_video(root / c / f"{c}{k}.mp4")
    return root


def test_class_folder(class_folder):
    clips, info = load("folder", class_folder, "action", seed=1)
    assert info == {"dataset": "folder:actions0", "split": "seed 1", "num_classes": 2}
    labels = np.concatenate([c["label"] for c in clips.values()])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]


# ------------------------------------------------------------------ box tracking: GOT-10k, LaSOT


def write_sequence(seq, boxes, flags=None, lasot=False, h=40, w=80):
    img = seq / "img" if lasot else seq
    img.mkdir(parents=True, exist_ok=True)
    for t in range(len(boxes)):
        Image.fromarray(np.full((h, w, 3), 30 * t, np.uint8)).save(img / f"{t + 1:08d}.jpg")
    (seq / "groundtruth.txt").write_text("\n".join(",".join(map(str, b)) for b in boxes) + "\n")
    flags = flags if flags is not None else [0] * len(boxes)
    if lasot:
        (seq / "full_occlusion.txt").write_text(",".join(map(str, flags)) + "\n")
        (seq / "out_of_view.txt").write_text(",".join("0" for _ in flags) + "\n")
    else:
        (seq / "absence.label").write_text("\n".join(map(str, flags)) + "\n")


BOXES = [[30, 10, 20, 15]] * 6


@pytest.fixture(scope="module")
def got10k(tmp_path_factory):
    root = tmp_path_factory.mktemp("GOT-10k")
    for k in range(3):
        write_sequence(root / "train" / f"GOT-10k_Train_{k + 1:06d}", BOXES)
    write_sequence(root / "val" / "GOT-10k_Val_000001", BOXES, flags=[0, 1, 0, 0, 0, 0])
    return root


def test_got10k_box_and_absence(got10k):
    clips, info = load("got10k", got10k, "box_tracking")
    assert info["split"] == "dataset splits; val drawn from train by seed 0"
    # 40x80 frames scaled by 16/40 to 16x32, cropped 8 px from the left: x 30..50 -> 4..12, y 10..25 -> 4..10
    np.testing.assert_allclose(clips["test"]["boxes"][0, 0, 0], [4, 4, 12, 10], rtol=1e-6)
    assert clips["test"]["box_visible"][0, 0].tolist() == [True, False, True, True]  # absent in frame 1


def test_lasot_testing_set_and_occlusion_flags(tmp_path):
    for k in range(4):
        write_sequence(
            tmp_path / "airplane" / f"airplane-{k + 1}", BOXES, flags=[0, 0, 0, 1, 0, 0], lasot=True
        )
    (tmp_path / "testing_set.txt").write_text("airplane-4\n")
    clips, info = load("lasot", tmp_path, "box_tracking", stride=2)  # frames 0, 2, 4, 5 (last repeated)
    assert [len(clips[s]["boxes"]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert clips["test"]["box_visible"][0, 0].tolist() == [True, True, True, True]  # frame 3 is not sampled
    clips, _ = load("lasot", tmp_path, "box_tracking")
    assert clips["test"]["box_visible"][0, 0].tolist() == [
        True,
        True,
        True,
        False,
    ]  # fully occluded in frame 3


def test_seeded_split_is_deterministic_and_covers_every_split():
    items, rule = split_items({"all": list(range(10))}, 7, {"train": 8, "val": 1, "test": 1})
    again, _ = split_items({"all": list(range(10))}, 7, {"train": 8, "val": 1, "test": 1})
    assert items == again and rule == "seed 7" and sorted(sum(items.values(), [])) == list(range(10))
    with pytest.raises(DataError, match="too small"):
        split_items({"all": [1, 2]}, 0, SIZES)


# ------------------------------------------------------------------ end to end: sweep eval --data


@pytest.mark.parametrize(
    "task, fmt, fixture",
    [
        ("point_tracking", "tapvid", "davis"),
        ("camera_pose", "realestate10k", "re10k"),
        ("depth", "scannet", "scannet"),
        ("action", "ssv2", "ssv2"),
        ("action", "folder", "class_folder"),
        ("box_tracking", "got10k", "got10k"),
    ],
)
def test_sweep_eval_scores_each_format(export, request, task, fmt, fixture):
    path = request.getfixturevalue(fixture)
    path = path[0] if isinstance(path, tuple) else path
    result = sweep_eval(export, task, f"{fmt}:{path}")
    assert result.exit_code == 0, result.output
    assert f"{fmt}:{Path(path).stem}" in result.output and f" {TASKS[task].headline} " in result.output


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_bad_data_exits_2_with_one_message_and_writes_nothing(export, tmp_path, monkeypatch, got10k):
    monkeypatch.chdir(tmp_path)
    cases = {
        "missing": ("depth", f"scannet:{tmp_path / 'nope'}", "no such file"),
        "unknown format": ("depth", f"nyu:{tmp_path}", "unknown format 'nyu'"),
        "wrong task": ("depth", f"tapvid:{tmp_path}", "point_tracking, which no --task names"),
    }
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"v": {"video": Evil(), "points": [], "occluded": []}}))
    cases["code in a pickle"] = ("point_tracking", f"tapvid:{evil}", "refusing to load posix.system")
    odd = tmp_path / "odd.pkl"
    odd.write_bytes(pickle.dumps({"v": {"video": {1, 2}, "points": [], "occluded": []}}))
    cases["a set in a pickle"] = (
        "point_tracking",
        f"tapvid:{odd}",
        "the pickle holds a set at ['v']['video']",
    )
    broken = tmp_path / "GOT-10k"
    write_sequence(broken / "train" / "a", BOXES)
    write_sequence(broken / "train" / "b", BOXES)
    write_sequence(broken / "val" / "c", BOXES)
    (broken / "val" / "c" / "groundtruth.txt").write_text("1,2,x,4\n")
    cases["corrupt file"] = ("box_tracking", f"got10k:{broken}", "groundtruth.txt: cannot parse numbers")
    before = sorted(p for p in tmp_path.rglob("*"))
    for name, (task, data, message) in cases.items():
        result = sweep_eval(export, task, data)
        assert result.exit_code == 2, (name, result.output)
        text = " ".join(result.output.split())
        assert text.startswith("error:") and message in text and "Traceback" not in text, (name, text)
    assert sorted(p for p in tmp_path.rglob("*")) == before and not (tmp_path / "pwned").exists()
