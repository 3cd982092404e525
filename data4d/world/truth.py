"""Ground truth of a rendered clip: point tracks (2D, 3D, occlusion) along the rigid motion, and boxes.

Every function takes the `SyntheticWorld` (`world`) for its settings."""

from __future__ import annotations

import numpy as np

from data4d.world.render import cast


def poses(world, sc: dict):
    """Per-surface rigid poses, the ground (identity) appended last so id -1 indexes it."""
    centre = np.concatenate([sc["centre"], np.zeros((1, world.frames, 3))])  # (O+1, T, 3)
    yaw = np.concatenate([sc["yaw"], np.zeros((1, world.frames))])  # (O+1, T)
    return centre, yaw


def tracks(world, rng: np.random.Generator, sc: dict, depth, seg, hit) -> dict:
    T, S, N = world.frames, world.size, world.points
    P = S * S
    q = np.sort(rng.integers(0, T, size=N))  # (N,) query frames
    on_object = rng.random(N) < 0.5  # half the points on objects (when any are visible)
    pix = np.empty(N, np.int64)
    segf, visible = seg.reshape(T, P), hit < world.far / 2  # not at the horizon
    for t in np.unique(q):
        sel = np.flatnonzero(q == t)
        anywhere = np.flatnonzero(visible[t])
        objects = np.flatnonzero(segf[t] >= 0)
        anywhere = anywhere if anywhere.size else np.arange(P)  # all sky: degenerate, never in practice
        pick = rng.choice(anywhere, size=len(sel))
        if objects.size:
            pick = np.where(on_object[sel], rng.choice(objects, size=len(sel)), pick)
        pix[sel] = pick
    obj = segf[q, pix].astype(np.int64)  # (N,) -1 = ground

    # World position of each query pixel, then its coordinates in its surface's frame.
    rot, eye = sc["rot"], sc["eye"]
    dcam = np.stack([world.ray_u[pix], world.ray_v[pix], np.ones(N, np.float32)], 1).astype(np.float64)
    z = depth.reshape(T, P)[q, pix].astype(np.float64)
    p = eye[q] + z[:, None] * np.einsum("nji,nj->ni", rot[q], dcam)  # (N, 3)
    centre, yaw = poses(world, sc)
    rel = p - centre[obj, q]
    a = -yaw[obj, q]
    local = np.stack(
        [
            np.cos(a) * rel[:, 0] - np.sin(a) * rel[:, 1],
            np.sin(a) * rel[:, 0] + np.cos(a) * rel[:, 1],
            rel[:, 2],
        ],
        1,
    )
    # Follow the rigid motion through the clip: (N, T, 3).
    cs, sn = np.cos(yaw[obj]), np.sin(yaw[obj])  # (N, T)
    path = np.stack(
        [
            cs * local[:, None, 0] - sn * local[:, None, 1],
            sn * local[:, None, 0] + cs * local[:, None, 1],
            np.broadcast_to(local[:, None, 2], cs.shape),
        ],
        -1,
    )
    path += centre[obj]

    cam = np.einsum("tij,ntj->nti", rot, path) + sc["extrinsics"][None, :, :3, 3]  # (N, T, 3)
    f = world.focal * S
    zc = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = f * cam[..., :2] / zc[..., None] + S / 2  # (N, T, 2)
    front = zc > 1e-6
    inside = front & (xy[..., 0] >= 0) & (xy[..., 0] < S) & (xy[..., 1] >= 0) & (xy[..., 1] < S)
    # Occluded: out of frame, behind the camera, or the first surface along the exact ray
    # through the point's image position is nearer than the point by more than 1% (another
    # object, or its own front side). Casting at the exact sub-pixel position, rather than
    # reading the depth map at the pixel centre, avoids false occlusions at silhouettes and
    # on the ground at grazing angles.
    xy[~front] = 0  # keep tracks finite behind the camera
    uv = ((xy - S / 2) / f).astype(np.float32).transpose(1, 0, 2)  # (T, N, 2) camera plane
    _, seen, _ = cast(world, sc, uv[..., 0], uv[..., 1])  # (T, N) nearest depth along each ray
    occluded = ~inside | (seen.T < 0.99 * zc)
    return dict(
        tracks=xy.astype(np.float32), occluded=occluded, tracks3d=path.astype(np.float32),
        query_frame=q, track_object=obj.astype(np.int16),
    )  # fmt: skip


def boxes(world, seg) -> dict:
    """Visible extent of each object from the segmentation: (O, T, 4) x0, y0, x1, y1 pixel edges."""
    n_obj, S = world.objects, world.size
    mask = seg[None] == np.arange(n_obj, dtype=np.int16)[:, None, None, None]  # (O, T, S, S)
    cols, rows = mask.any(2), mask.any(3)  # (O, T, S)
    vis = cols.any(-1)
    boxes = np.stack(
        [
            cols.argmax(-1),
            rows.argmax(-1),
            S - cols[..., ::-1].argmax(-1),
            S - rows[..., ::-1].argmax(-1),
        ],
        -1,
    )
    return dict(boxes=np.where(vis[..., None], boxes, 0).astype(np.float32), box_visible=vis)
