"""Real-data readers, each on a tiny fixture written here in the real format."""

import io
import json
import os
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from PIL import Image

from data4d import PretrainStream
from data4d.readers import (
    BoxTracks,
    DataError,
    RealEstate10K,
    RGBDScenes,
    SomethingSomethingV2,
    TapVid,
    VideoFolder,
    WebDataset,
    load_pickle,
)

CODECS = {".mp4": "libx264", ".webm": "libvpx", ".avi": "mpeg4"}


def write_video(path, n=12, h=40, w=64, shift=0):
    """Frame k is flat grey 20 * k + shift: its index survives lossy coding as the frame mean."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        s = out.add_stream(CODECS[path.suffix], rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k in range(n):
            img = np.full((h, w, 3), 20 * k + shift, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def frame_ids(video, shift=0):
    return np.round((video.reshape(len(video), -1).mean(1) - shift) / 20).astype(int).tolist()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for k, ext in enumerate((".mp4", ".webm", ".avi")):
        write_video(root / "sub" / f"v{k}{ext}", shift=k)
    return root


def test_video_folder(videos):
    ds = VideoFolder(videos, frames=4, resolution=32, stride=2)
    assert len(ds) == 3 and [p.suffix for p in ds.files] == [".mp4", ".webm", ".avi"]
    for k in range(3):
        clip = ds[k]
        assert clip["video"].shape == (4, 32, 32, 3) and clip["video"].dtype == np.uint8
        assert frame_ids(clip["video"], k) == [2, 4, 6, 8]  # 12 frames, span 7: centred start 2
    a = ds.read(0, rng=np.random.default_rng(5))["video"]
    np.testing.assert_array_equal(a, ds.read(0, rng=np.random.default_rng(5))["video"])
    starts = {frame_ids(ds.read(0, rng=np.random.default_rng(s))["video"])[0] for s in range(60)}
    assert starts == set(range(6))  # random start covers every valid offset
    # too short a video holds its last frame
    assert frame_ids(VideoFolder(videos, frames=8, resolution=16, stride=2)[0]["video"]) == [
        0,
        2,
        4,
        6,
        8,
        10,
        10,
        10,
    ]


def test_corrupt_and_missing_video(tmp_path):
    write_video(tmp_path / "good.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"\x00not a video" * 100)
    ds = VideoFolder(tmp_path, frames=2, resolution=16)
    with pytest.raises(DataError, match="bad.mp4"):
        ds[0]
    with pytest.raises(DataError, match="nowhere"):
        VideoFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no video files"):
        VideoFolder(tmp_path / "empty")


def write_shards(root, videos):
    files = sorted(p for p in Path(videos).rglob("*") if p.is_file())
    for s in range(2):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for k, f in enumerate(files):
                if k % 2 != s:
                    continue
                for name, data in ((f"clip{k}{f.suffix}", f.read_bytes()), (f"clip{k}.cls", str(k).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_webdataset(videos, tmp_path):
    write_shards(tmp_path, videos)
    ds = WebDataset(str(tmp_path / "shard-{000..001}.tar"), frames=3, resolution=24, stride=3)
    assert len(ds) == 3 and len(WebDataset(tmp_path, frames=3, resolution=24)) == 3
    for i in range(3):
        clip = ds[i]
        k = clip["label"]
        assert clip["video"].shape == (3, 24, 24, 3)
        assert frame_ids(clip["video"], k) == [2, 5, 8]
    (tmp_path / "shard-002.tar").write_bytes(b"garbage" * 200)
    with pytest.raises(DataError, match="shard-002.tar"):
        WebDataset(str(tmp_path / "shard-*.tar"))


@pytest.mark.parametrize("source", ["video_folder", "webdataset"])
def test_pretrain_stream_on_real_data(videos, tmp_path, source):
    path = videos
    if source == "webdataset":
        write_shards(tmp_path, videos)
        path = tmp_path
    data = SimpleNamespace(source=source, path=str(path), frames=2, resolution=16, stride=1, world=None)
    a = PretrainStream(data, seed=0, per_rank_batch=2, rank=0, world_size=2)
    x = a.batch(4)
    assert x.shape == (2, 2, 16, 16, 3) and x.dtype == torch.uint8
    assert torch.equal(x, PretrainStream(data, seed=0, per_rank_batch=2, rank=0, world_size=2).batch(4))
    assert not torch.equal(x, PretrainStream(data, seed=0, per_rank_batch=2, rank=1, world_size=2).batch(4))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on a 2-core CI machine
@pytest.mark.parametrize("source", ["video_folder", "webdataset"])
def test_decode_workers_and_resume_give_the_same_batch_bytes(videos, tmp_path, source):
    path = videos
    if source == "webdataset":
        write_shards(tmp_path, videos)
        path = tmp_path
    data = SimpleNamespace(source=source, path=str(path), frames=4, resolution=16, stride=1, world=None)

    def stream():  # a fresh one per run, as a restarted rank builds it
        return PretrainStream(data, seed=7, per_rank_batch=2, rank=1, world_size=2)

    steps = 6  # 3 clips, 4 per global step: every step crosses an epoch's reshuffle
    expected = [stream().batch(s) for s in range(steps)]
    # random start frames and reshuffles make the steps differ, so equality below is not trivial
    assert len({bytes(b.numpy()) for b in expected}) == steps

    def run(start, workers):
        it = stream().iter_from(start, workers=workers)
        got = [next(it) for _ in range(start, steps)]
        it.close()
        return got

    for workers in (0, 1, 3):
        for start in (0, 4):  # from the beginning, and resumed at step 4
            got = run(start, workers)
            assert [s for s, _ in got] == list(range(start, steps))
            for s, batch in got:
                assert torch.equal(batch, expected[s]), (workers, start, s)


def test_corrupt_video_in_a_decode_worker_is_one_error_naming_the_file(tmp_path):
    write_video(tmp_path / "good.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"\x00not a video" * 100)
    data = SimpleNamespace(source="video_folder", path=str(tmp_path), frames=2, resolution=16, stride=1)
    it = PretrainStream(data, seed=0, per_rank_batch=2).iter_from(0, workers=2)  # each batch reads both
    with pytest.raises(DataError) as e:
        next(it)
    assert "bad.mp4: cannot decode video" in str(e.value)
    assert "DataLoader" not in str(e.value) and "Traceback" not in str(e.value)


# ------------------------------------------------------------------ TAP-Vid


def tapvid_entry(rng, T=5, H=20, W=30, N=7):
    occ = rng.random((N, T)) < 0.3
    occ[:, 2] = False
    return {
        "video": rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8),
        "points": rng.random((N, T, 2)),
        "occluded": occ,
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_tapvid(tmp_path, protocol):
    rng = np.random.default_rng(0)
    data = {"b": tapvid_entry(rng), "a": tapvid_entry(rng)}
    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    ds = TapVid(path)
    assert len(ds) == 2
    clip = ds[0]
    assert clip["name"] == "a"
    np.testing.assert_array_equal(clip["video"], data["a"]["video"])
    np.testing.assert_allclose(clip["tracks"], data["a"]["points"] * [30, 20], rtol=1e-6)
    np.testing.assert_array_equal(clip["occluded"], data["a"]["occluded"])
    assert not clip["occluded"][np.arange(7), clip["query_frame"]].any()
    resized = TapVid(path, resolution=16)[0]
    assert resized["video"].shape == (5, 16, 16, 3)
    np.testing.assert_allclose(resized["tracks"], data["a"]["points"] * 16, rtol=1e-6)


def test_tapvid_kinetics_jpeg_list(tmp_path):
    rng = np.random.default_rng(1)
    e = tapvid_entry(rng)
    frames = []
    for f in e["video"]:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG")
        frames.append(buf.getvalue())
    path = tmp_path / "kinetics.pkl"
    path.write_bytes(pickle.dumps([{**e, "video": frames}]))
    clip = TapVid(path)[0]
    assert clip["video"].shape == (5, 20, 30, 3)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"video": Evil()}))
    with pytest.raises(DataError, match=r"evil\.pkl.*refusing.*system"):
        load_pickle(path)
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(pickle.dumps({"x": SimpleNamespace(a=1)}))
    with pytest.raises(DataError, match="SimpleNamespace"):
        TapVid(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="evil.pkl"):
        TapVid(path)


# ------------------------------------------------------------------ RGB-D, cameras, boxes, SSv2


def write_scannet(scene, T=3, h=24, w=32):
    for d in ("color", "depth", "intrinsic", "pose"):
        (scene / d).mkdir(parents=True, exist_ok=True)
    K = np.array([[30.0, 0, 16, 0], [0, 31, 12, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", K)
    poses = []
    for t in range(T):
        Image.fromarray(np.full((2 * h, 2 * w, 3), 40 * t, np.uint8)).save(scene / "color" / f"{t}.jpg")
        mm = (1000 + 100 * t + np.arange(h * w).reshape(h, w)).astype(np.uint16)
        Image.fromarray(mm).save(scene / "depth" / f"{t}.png")
        pose = np.eye(4)
        pose[:3, 3] = [t, 0, 1]
        np.savetxt(scene / "pose" / f"{t}.txt", pose)
        poses.append(pose)
    return K, poses


def test_rgbd_scenes(tmp_path):
    K, poses = write_scannet(tmp_path / "scene0000_00")
    ds = RGBDScenes(tmp_path)
    clip = ds[0]
    assert clip["video"].shape == (3, 24, 32, 3) and clip["depth"].shape == (3, 24, 32)
    np.testing.assert_allclose(
        clip["depth"][1, 0, :3], [1.1, 1.101, 1.102], rtol=1e-6
    )  # millimetres -> metres
    np.testing.assert_allclose(clip["intrinsics"], K[:3, :3])
    np.testing.assert_allclose(clip["extrinsics"][2], np.linalg.inv(poses[2]), atol=1e-6)
    small = RGBDScenes(tmp_path, resolution=12, stride=2)[0]  # 24x32 -> 12x16 -> crop 12x12
    assert small["video"].shape == (2, 12, 12, 3) and small["depth"].shape == (2, 12, 12)
    np.testing.assert_allclose(small["intrinsics"], [[15, 0, 6], [0, 15.5, 6], [0, 0, 1]])
    (tmp_path / "scene0000_00" / "depth" / "1.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="1.png"):
        ds[0]


def test_realestate10k(tmp_path):
    rng = np.random.default_rng(0)
    poses = rng.normal(size=(4, 3, 4))
    lines = ["https://www.youtube.com/watch?v=abc"]
    for t in range(4):
        lines.append(" ".join(map(str, [1000 * t, 0.5, 0.6, 0.5, 0.5, 0, 0, *poses[t].ravel()])))
    (tmp_path / "seq1.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "seq1").mkdir()
    for t in range(4):
        Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "seq1" / f"{1000 * t}.png")
    clip = RealEstate10K(tmp_path, stride=2)[0]
    assert clip["url"].endswith("v=abc") and clip["timestamps"].tolist() == [0, 2000]
    np.testing.assert_allclose(clip["extrinsics"][1, :3], poses[2], rtol=1e-6)
    np.testing.assert_allclose(clip["intrinsics"], [[20, 0, 20], [0, 12, 10], [0, 0, 1]])
    assert clip["video"].shape == (2, 20, 40, 3)
    crop = RealEstate10K(tmp_path, resolution=10)[0]  # 20x40 -> 10x20 -> crop 10x10 at left 5
    np.testing.assert_allclose(crop["intrinsics"], [[10, 0, 5], [0, 6, 5], [0, 0, 1]])
    (tmp_path / "seq1.txt").write_text(lines[0] + "\n1 2 3\n")
    with pytest.raises(DataError, match="seq1.txt"):
        RealEstate10K(tmp_path)[0]


def test_box_tracks(tmp_path):
    write_video(tmp_path / "clip.mp4", n=6, h=40, w=80)
    boxes = [[[10, 5, 30, 25]] * 6, [None, [60, 0, 80, 40], None, None, [0, 0, 10, 10], None]]
    ann = {
        "video": "clip.mp4",
        "objects": [{"id": 7, "category": "car", "boxes": boxes[0]}, {"id": 8, "boxes": boxes[1]}],
    }
    (tmp_path / "clip.json").write_text(json.dumps(ann))
    clip = BoxTracks(tmp_path, frames=3, stride=2, resolution=20)[0]  # 40x80 -> 20x40 -> crop at left 10
    assert clip["video"].shape == (3, 20, 20, 3) and clip["object_ids"] == [7, 8]
    np.testing.assert_allclose(clip["boxes"][0, 0], [0, 2.5, 5, 12.5])
    assert clip["box_visible"].tolist() == [
        [True, True, True],
        [False, False, False],
    ]  # [0,0,10,10] -> cropped away
    (tmp_path / "clip.json").write_text("{not json")
    with pytest.raises(DataError, match="clip.json"):
        BoxTracks(tmp_path)[0]


def test_something_something_v2(tmp_path):
    labels = {"Pushing something from left to right": "0", "Putting something on a surface": "1"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    items = [
        {
            "id": "42",
            "label": "putting a cup on a table",
            "template": "Putting [something] on a surface",
            "placeholders": ["a cup"],
        },
        {
            "id": "43",
            "label": "pushing a pen from left to right",
            "template": "Pushing [something] from left to right",
        },
    ]
    (tmp_path / "validation.json").write_text(json.dumps(items))
    write_video(tmp_path / "videos" / "42.webm", n=10)
    ds = SomethingSomethingV2(tmp_path, split="validation", frames=4, resolution=16, stride=2)
    assert len(ds) == 2
    clip = ds[0]
    assert clip["label"] == 1 and clip["video"].shape == (4, 16, 16, 3)
    assert frame_ids(clip["video"]) == [1, 3, 5, 7]
    with pytest.raises(DataError, match="43.webm"):
        ds[1]
    (tmp_path / "validation.json").write_text(json.dumps([{"id": "1", "template": "Unknown [something]"}]))
    with pytest.raises(DataError, match="validation.json"):
        SomethingSomethingV2(tmp_path)
