"""The synthetic 4D world: small ray-cast clips with exact ground truth.

Each clip is a textured ground plane with a few textured spheres and boxes
(smooth, band-limited textures: sums of plane waves, see `_scene`),
seen by a camera that moves smoothly. Objects move rigidly (translate and spin
about the vertical), occlude each other and leave the frame. Because we cast
the rays ourselves, depth, camera poses, point tracks (2D and 3D), occlusion,
object boxes and a segmentation map come for free and are exact.

Conventions
- world: z up, ground plane z = 0.
- camera: OpenCV (x right, y down, z forward); extrinsics map world -> camera.
- pixels: (x, y) with pixel centres at +0.5; depth is camera z (not ray length).
- clip i of split s is a pure function of (seed, s, i): order-free and the same
  bytes in any process.

Speed: every pixel of every frame is one row of a (T, P) array; intersections
are analytic (ray-plane, ray-sphere, ray-box slabs) and textures are cheap
functions of surface coordinates, so a clip is a few dozen NumPy passes.

The units, in the order a clip is made (`SyntheticWorld.__getitem__`):
- `world.dataset`  `SyntheticWorld`: the settings, the motion classes, clip i of a split
- `world.scene`    the scene a clip's rng samples: camera path, objects and motion, light, textures
- `world.render`   rays cast through the scene, and the shaded frames, depth and segmentation
- `world.truth`    point tracks (2D, 3D, occlusion) and boxes from the scene and the rendered depth
"""

from data4d.world.dataset import SPLITS, SyntheticWorld
from data4d.world.scene import BOX, SPHERE, look_at

__all__ = ["BOX", "SPHERE", "SPLITS", "SyntheticWorld", "look_at"]
