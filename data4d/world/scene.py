"""Scene sampling: a clip's camera path, objects, their motion, the light and the textures, from its rng.

Every function takes the `SyntheticWorld` (`world`) for its settings."""

from __future__ import annotations

import numpy as np

SPHERE, BOX = 0, 1


def look_at(eye, target):
    """World->camera rotation (3, 3) for OpenCV axes, z world up. eye/target: (T, 3)."""
    fwd = target - eye
    fwd /= np.linalg.norm(fwd, axis=-1, keepdims=True)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], axis=-2)  # rows are the camera axes in world coords


def sample_scene(world, rng: np.random.Generator, label: int) -> dict:
    """Camera path and object poses (all float64) that realise `label`."""
    T, n_obj, name = world.frames, world.objects, world.CLASSES[label]
    s = np.linspace(0.0, 1.0, T)[:, None]  # (T, 1) clip time
    u = rng.uniform

    # Camera orbits the origin at a random azimuth, looking slightly down at the scene.
    phi, dist, height = u(0, 2 * np.pi), u(5, 8), u(1.5, 3.5)
    target0 = np.array([u(-0.5, 0.5), u(-0.5, 0.5), u(0.3, 0.8)])
    eye0 = target0 * [1, 1, 0] + [dist * np.cos(phi), dist * np.sin(phi), height]
    fwd = (target0 - eye0) / np.linalg.norm(target0 - eye0)
    fwd_h = np.array([fwd[0], fwd[1], 0.0]) / np.linalg.norm(fwd[:2])  # horizontal forward
    right = np.array([fwd_h[1], -fwd_h[0], 0.0])
    eye = eye0 + (s - 0.5) * rng.normal(size=3) * world.camera_jitter  # (T, 3) smooth drift
    target = target0 + (s - 0.5) * rng.normal(size=3) * world.camera_jitter * 0.5
    if name.startswith("camera pans"):
        side = -1 if name.endswith("left") else 1
        target = target0 + (s - 0.5) * side * np.tan(u(*world.pan)) * dist * right
    elif name.startswith("camera moves"):
        side = 1 if name.endswith("in") else -1
        eye = eye0 + (s - 0.5) * side * u(*world.dolly) * fwd
    rot = (
        look_at(eye, target).astype(np.float32).astype(np.float64)
    )  # (T, 3, 3) rounded once, used everywhere
    ext = np.tile(np.eye(4), (T, 1, 1))
    ext[:, :3, :3], ext[:, :3, 3] = rot, -np.einsum("tij,tj->ti", rot, eye)

    # Objects: 0 is the big, central one that carries the label; the rest wander.
    kind = rng.integers(0, 2, size=n_obj)
    kind[0] = BOX if "spins" in name else kind[0]
    half = np.empty((n_obj, 3))  # box half extents; spheres use half[:, 0] as radius
    half[0] = u(0.6, 1.0, size=3) if kind[0] == BOX else u(0.8, 1.2)
    half[1:] = np.where(
        kind[1:, None] == BOX, u(0.2, 0.5, size=(n_obj - 1, 3)), u(0.25, 0.55, size=(n_obj - 1, 1))
    )
    rest = np.where(kind == BOX, half[:, 2], half[:, 0])  # centre height when resting on the ground
    centre = np.empty((n_obj, T, 3))
    yaw = np.empty((n_obj, T))
    c0 = np.array([target0[0], target0[1], rest[0]]) + u(-0.3, 0.3, size=3) * [1, 1, 0]
    a = u(*world.object_motion)
    moves = {
        "object moves left": (0.5 - s) * a * right,
        "object moves right": (s - 0.5) * a * right,
        "object moves up": s * 0.8 * a * np.array([0, 0, 1.0]),
        "object moves down": (1 - s) * 0.8 * a * np.array([0, 0, 1.0]),
        "object moves toward camera": (0.5 - s) * 1.5 * a * fwd_h,  # depth motion reads weaker: go further
        "object moves away from camera": (s - 0.5) * 1.5 * a * fwd_h,
    }
    centre[0] = c0 + moves.get(name, 0 * s)
    spin = {"object spins clockwise": -1, "object spins counter-clockwise": 1}.get(name, 0) * u(*world.spin)
    yaw[0] = u(0, 2 * np.pi) + spin * s[:, 0]
    for o in range(1, n_obj):  # distractors: random start around the target, straight-line motion, some float
        r, ang = u(1.5, 4.5), u(0, 2 * np.pi)
        lift = u(0.3, 1.5) if u() < 0.3 else 0.0
        start = target0 * [1, 1, 0] + [r * np.cos(ang), r * np.sin(ang), rest[o] + lift]
        vel = np.r_[rng.normal(size=2), 0] * u(0, 0.4 * world.object_motion[1]) / np.sqrt(2)
        centre[o] = start + (s - 0.5) * vel
        yaw[o] = u(0, 2 * np.pi) + u(-1, 1) * world.spin[1] * 0.5 * s[:, 0]

    light = np.array([np.cos(b := u(0, 2 * np.pi)), np.sin(b), 0.0])
    el = u(0.6, 1.2)
    light = light * np.cos(el) + [0, 0, np.sin(el)]
    # Textures: per surface (objects, then the ground) a sum of WAVES plane waves in surface coordinates
    # with log-uniform periods and amplitudes proportional to the period (a 1/f spectrum), blending the
    # surface's two colours. Periods stay above a few pixels at the usual distances, so the texture is
    # band-limited: a small motion moves it a little instead of scrambling it (hard checkers of 1-3 px
    # did), which is what lets a masked tubelet be predicted from the detail of visible ones.
    n_surf, K = n_obj + 1, world.WAVES
    direction = rng.normal(size=(n_surf, K, 3))
    direction[-1, :, 2] = 0  # the ground's waves run along it
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    period = np.exp(u(np.log(world.texture[0]), np.log(world.texture[1]), size=(n_surf, K)))
    period[-1] *= 2  # the ground is seen from further away and at a grazing angle
    amp = period / period.sum(-1, keepdims=True)
    waves = dict(
        k=direction * (2 * np.pi / period)[..., None], phase=u(0, 2 * np.pi, size=(n_surf, K)), amp=amp
    )
    return dict(
        eye=eye, rot=rot, extrinsics=ext, kind=kind, half=half, centre=centre, yaw=yaw, light=light,
        colors=u(0.15, 1.0, size=(n_obj, 2, 3)), waves=waves, ground=u(0.25, 0.75, size=(2, 3)),
    )  # fmt: skip
