"""The synthetic world as a dataset: its settings, and clip i of a split from (seed, split, i) alone."""

import numpy as np

from data4d.world.render import render
from data4d.world.scene import sample_scene
from data4d.world.truth import boxes, tracks

SPLITS = {"pretrain": 0, "train": 1, "val": 2, "test": 3}


class SyntheticWorld:
    """A virtual, indexable dataset of synthetic 4D clips (see module docstring)."""

    # Motion classes: each needs more than one frame to tell apart.
    CLASSES = [
        "object moves left",
        "object moves right",
        "object moves up",
        "object moves down",
        "object moves toward camera",
        "object moves away from camera",
        "object spins clockwise",
        "object spins counter-clockwise",
        "camera pans left",
        "camera pans right",
        "camera moves in",
        "camera moves out",
    ]

    WAVES = 4  # plane waves per surface texture

    def __init__(
        self,
        frames=16,
        size=64,
        seed=0,
        objects=3,
        points=64,
        focal=1.0,
        split="pretrain",
        length=10**9,
        object_motion=(1.0, 2.5),  # dominant object's displacement over a clip (world units)
        spin=(1.5, 3.0),  # dominant object's rotation over a clip (radians)
        pan=(0.25, 0.5),  # camera pan over a clip (radians)
        dolly=(1.5, 3.0),  # camera travel for the move in/out classes (world units)
        camera_jitter=0.3,  # smooth random camera drift in the other classes (world units)
        far=100.0,  # depth given to the sky
        texture=(
            0.5,
            2.0,
        ),  # range of the texture waves' periods on objects (world units; the ground's are 2x)
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if objects < 1:
            raise ValueError("objects must be >= 1 (object 0 carries the motion label)")
        self.frames, self.size, self.seed, self.objects, self.points = frames, size, seed, objects, points
        self.focal, self.split, self.length = focal, split, length
        self.object_motion, self.spin, self.pan, self.dolly = object_motion, spin, pan, dolly
        self.camera_jitter, self.far, self.texture = camera_jitter, far, texture
        # Camera-frame ray directions with unit z, so a ray's parameter is its z-depth.
        f = focal * size
        g = ((np.arange(size) + 0.5 - size / 2) / f).astype(np.float32)
        self.ray_u = np.tile(g, size)  # (P,) x varies along a row
        self.ray_v = np.repeat(g, size)  # (P,)
        self.ray_norm2 = self.ray_u**2 + self.ray_v**2 + 1  # (P,) squared ray length
        self.intrinsics = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float32)

    @property
    def num_classes(self):
        return len(self.CLASSES)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(i)])
        label = int(i) % self.num_classes
        scene = sample_scene(self, rng, label)
        rgb, depth, seg, hit = render(self, scene)
        clip = dict(video=rgb, depth=depth, segmentation=seg, intrinsics=self.intrinsics.copy(), label=label)
        clip["extrinsics"] = scene["extrinsics"].astype(np.float32)
        clip.update(tracks(self, rng, scene, depth, seg, hit))
        clip.update(boxes(self, seg))
        return clip
