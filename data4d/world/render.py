"""Rendering: rays cast through a scene (nearest hit, its depth and surface) and the shaded RGB frames.

Every function takes the `SyntheticWorld` (`world`) for its settings and camera rays."""

from __future__ import annotations

import numpy as np

from data4d.world.scene import SPHERE


def cast(world, sc: dict, u, v):
    """Nearest hit along the rays through camera-plane points (u, v, 1), both broadcast to (T, M).

    Returns the world ray directions [(T, M)] * 3, the hit's z-depth (T, M) (inf: sky) and
    the surface id (T, M) int16 (-1: ground or sky).
    """
    f32, far = np.float32, world.far
    rot, eye = sc["rot"].astype(f32), sc["eye"].astype(f32)
    a = u * u + v * v + 1  # squared ray length
    # World ray directions d = R^T d_cam, one (T, M) array per component.
    d = [rot[:, 0, k, None] * u + rot[:, 1, k, None] * v + rot[:, 2, k, None] for k in range(3)]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # Ground plane z = 0, cut off at `far` (beyond is sky).
        best = np.where(d[2] < 0, -eye[:, 2, None] / d[2], np.inf).astype(f32)  # (T, M) nearest hit so far
        best[best > far] = np.inf
        ident = np.full(best.shape, -1, np.int16)
        for o in range(world.objects):
            c = (eye - sc["centre"][o].astype(f32))[:, :, None]  # (T, 3, 1) eye relative to object
            if sc["kind"][o] == SPHERE:
                r = f32(sc["half"][o, 0])
                b = d[0] * c[:, 0] + d[1] * c[:, 1] + d[2] * c[:, 2]
                disc = b * b - a * ((c * c).sum(1) - r * r)
                t = (-b - np.sqrt(np.maximum(disc, 0))) / a
                t[(disc <= 0) | (t <= 0)] = np.inf
            else:  # slabs in the box frame (rotated by -yaw about z)
                cs, sn = (
                    np.cos(sc["yaw"][o]).astype(f32)[:, None],
                    np.sin(sc["yaw"][o]).astype(f32)[:, None],
                )
                lo = (cs * c[:, 0] + sn * c[:, 1], -sn * c[:, 0] + cs * c[:, 1], c[:, 2])
                ld = (cs * d[0] + sn * d[1], -sn * d[0] + cs * d[1], d[2])
                tn, tf = None, None
                for k in range(3):
                    h, inv = f32(sc["half"][o, k]), 1 / ld[k]
                    t1, t2 = (-h - lo[k]) * inv, (h - lo[k]) * inv
                    n, x = np.minimum(t1, t2), np.maximum(t1, t2)
                    tn = n if tn is None else np.maximum(tn, n)
                    tf = x if tf is None else np.minimum(tf, x)
                t = np.where((tn <= tf) & (tn > 0), tn, np.inf)
            closer = t < best
            ident[closer] = o
            np.minimum(best, t, out=best)
    return d, best, ident


def render(world, sc: dict):
    T, S, far = world.frames, world.size, world.far
    P = S * S
    f32 = np.float32
    eye, a = sc["eye"].astype(f32), world.ray_norm2
    d, best, ident = cast(world, sc, world.ray_u, world.ray_v)  # (T, P) each

    # Shade each surface only where it won the depth test, as 1-D arrays over the flat T*P
    # pixels. A pixel's colour is palette[cid] * w1 + horizon * w2: scalar work per surface,
    # one (T*P, 3) pass at the end.
    n_obj = world.objects
    flat_t, idf = best.ravel(), ident.ravel()
    df = [x.ravel() for x in d]
    cid = np.empty(T * P, np.int16)  # palette entry: 2 per object, 2 for the ground, 1 for the sky
    mix = np.zeros(T * P, f32)  # texture value in [0, 1]: how far from a surface's first colour to its second
    w1, w2 = np.empty(T * P, f32), np.zeros(T * P, f32)
    lx, ly, lz = sc["light"].astype(f32)
    wk, wphase, wamp = (sc["waves"][k].astype(f32) for k in ("k", "phase", "amp"))

    def texture(surf, q):  # 0.5 + sum of the surface's plane waves at surface coordinates q [(n,)] * 3
        v = np.zeros_like(q[0])
        for j in range(world.WAVES):
            kx, ky, kz = wk[surf, j]
            v += wamp[surf, j] * np.sin(kx * q[0] + ky * q[1] + kz * q[2] + wphase[surf, j])
        return np.clip(0.5 + v, 0, 1)  # contrast 2 with clipping: flat patches between smooth edges

    def hit(idx):  # frame (n,) and world hit point [(n,)] * 3 of flat pixel indices idx
        fr, t = idx // P, flat_t[idx]
        return fr, [eye[fr, k] + t * df[k][idx] for k in range(3)]

    for o in range(n_obj):
        idx = np.flatnonzero(idf == o)
        if idx.size == 0:
            continue
        fr, p = hit(idx)
        q = [p[k] - sc["centre"][o, :, k].astype(f32)[fr] for k in range(3)]  # relative to the centre
        cs, sn = np.cos(sc["yaw"][o]).astype(f32)[fr], np.sin(sc["yaw"][o]).astype(f32)[fr]
        ql = [cs * q[0] + sn * q[1], cs * q[1] - sn * q[0], q[2]]  # object frame
        if sc["kind"][o] == SPHERE:
            ndotl = (q[0] * lx + q[1] * ly + q[2] * lz) / f32(sc["half"][o, 0])
        else:  # the face whose slab is tightest, dotted with the light in the object frame
            rel = [ql[k] / f32(sc["half"][o, k]) for k in range(3)]
            ax, ay, az = (np.abs(r) for r in rel)
            llx, lly = cs * lx + sn * ly, cs * ly - sn * lx
            ndotl = np.where(
                (ax >= ay) & (ax >= az),
                np.sign(rel[0]) * llx,
                np.where(ay >= az, np.sign(rel[1]) * lly, np.sign(rel[2]) * lz),
            )
        cid[idx] = 2 * o
        mix[idx] = texture(o, ql)  # solid texture in the object frame: it spins along
        w1[idx] = 0.35 + 0.65 * np.maximum(ndotl, 0)

    idx = np.flatnonzero((idf == -1) & np.isfinite(flat_t))
    fr, (px, py, _) = hit(idx)
    cid[idx] = 2 * n_obj
    mix[idx] = texture(n_obj, [px, py, 0 * px])
    shade = np.full(idx.size, 0.4 + 0.6 * lz, f32)
    for o in range(n_obj):  # soft blob shadow under each object, cast along the light
        c = sc["centre"][o]
        sh = (c[:, :2] - [lx, ly] * (c[:, 2:] / lz)).astype(f32)  # (T, 2) shadow centre on the ground
        r2 = f32(sc["half"][o, :2].max() ** 2)
        shade *= 1 - 0.5 * np.exp(-((px - sh[fr, 0]) ** 2 + (py - sh[fr, 1]) ** 2) / r2)
    fog = np.sqrt(flat_t[idx] / f32(far))
    w1[idx], w2[idx] = shade * (1 - fog), fog

    idx = np.flatnonzero(np.isinf(flat_t))
    cid[idx], w2[idx] = 2 * n_obj + 2, 1
    w1[idx] = np.clip(df[2][idx] / np.sqrt(a[idx % P]), 0, 1)  # elevation: horizon to zenith

    horizon, zenith = np.array([0.8, 0.85, 0.9], f32), np.array([0.35, 0.55, 0.85], f32)
    palette = np.concatenate([sc["colors"].reshape(-1, 3), sc["ground"], [zenith - horizon]]).astype(f32)
    delta = np.zeros_like(palette)  # second colour minus first, at each surface's first entry
    delta[0 : 2 * n_obj + 2 : 2] = palette[1 : 2 * n_obj + 2 : 2] - palette[0 : 2 * n_obj + 2 : 2]
    rgb = (palette[cid] + delta[cid] * mix[:, None]) * w1[:, None] + horizon * w2[:, None]  # (T*P, 3)
    np.clip(rgb, 0, 1, out=rgb)
    video = (rgb * 255 + 0.5).astype(np.uint8).reshape(T, S, S, 3)
    depth = np.where(np.isinf(best), f32(far), best)  # (T, P)
    return video, depth.reshape(T, S, S), ident.reshape(T, S, S), best
