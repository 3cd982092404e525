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
"""

import numpy as np

SPLITS = {"pretrain": 0, "train": 1, "val": 2, "test": 3}
SPHERE, BOX = 0, 1


def look_at(eye, target):
    """World->camera rotation (3, 3) for OpenCV axes, z world up. eye/target: (T, 3)."""
    fwd = target - eye
    fwd /= np.linalg.norm(fwd, axis=-1, keepdims=True)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], axis=-2)  # rows are the camera axes in world coords


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
        self._cu = np.tile(g, size)  # (P,) x varies along a row
        self._cv = np.repeat(g, size)  # (P,)
        self._a = self._cu**2 + self._cv**2 + 1  # (P,) squared ray length
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
        scene = self._scene(rng, label)
        rgb, depth, seg, hit = self._render(scene)
        clip = dict(video=rgb, depth=depth, segmentation=seg, intrinsics=self.intrinsics.copy(), label=label)
        clip["extrinsics"] = scene["extrinsics"].astype(np.float32)
        clip.update(self._tracks(rng, scene, depth, seg, hit))
        clip.update(self._boxes(seg))
        return clip

    # ------------------------------------------------------------------ scene

    def _scene(self, rng, label):
        """Camera path and object poses (all float64) that realise `label`."""
        T, n_obj, name = self.frames, self.objects, self.CLASSES[label]
        s = np.linspace(0.0, 1.0, T)[:, None]  # (T, 1) clip time
        u = rng.uniform

        # Camera orbits the origin at a random azimuth, looking slightly down at the scene.
        phi, dist, height = u(0, 2 * np.pi), u(5, 8), u(1.5, 3.5)
        target0 = np.array([u(-0.5, 0.5), u(-0.5, 0.5), u(0.3, 0.8)])
        eye0 = target0 * [1, 1, 0] + [dist * np.cos(phi), dist * np.sin(phi), height]
        fwd = (target0 - eye0) / np.linalg.norm(target0 - eye0)
        fwd_h = np.array([fwd[0], fwd[1], 0.0]) / np.linalg.norm(fwd[:2])  # horizontal forward
        right = np.array([fwd_h[1], -fwd_h[0], 0.0])
        eye = eye0 + (s - 0.5) * rng.normal(size=3) * self.camera_jitter  # (T, 3) smooth drift
        target = target0 + (s - 0.5) * rng.normal(size=3) * self.camera_jitter * 0.5
        if name.startswith("camera pans"):
            side = -1 if name.endswith("left") else 1
            target = target0 + (s - 0.5) * side * np.tan(u(*self.pan)) * dist * right
        elif name.startswith("camera moves"):
            side = 1 if name.endswith("in") else -1
            eye = eye0 + (s - 0.5) * side * u(*self.dolly) * fwd
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
        a = u(*self.object_motion)
        moves = {
            "object moves left": (0.5 - s) * a * right,
            "object moves right": (s - 0.5) * a * right,
            "object moves up": s * 0.8 * a * np.array([0, 0, 1.0]),
            "object moves down": (1 - s) * 0.8 * a * np.array([0, 0, 1.0]),
            "object moves toward camera": (0.5 - s)
            * 1.5
            * a
            * fwd_h,  # depth motion reads weaker: go further
            "object moves away from camera": (s - 0.5) * 1.5 * a * fwd_h,
        }
        centre[0] = c0 + moves.get(name, 0 * s)
        spin = {"object spins clockwise": -1, "object spins counter-clockwise": 1}.get(name, 0) * u(
            *self.spin
        )
        yaw[0] = u(0, 2 * np.pi) + spin * s[:, 0]
        for o in range(
            1, n_obj
        ):  # distractors: random start around the target, straight-line motion, some float
            r, ang = u(1.5, 4.5), u(0, 2 * np.pi)
            lift = u(0.3, 1.5) if u() < 0.3 else 0.0
            start = target0 * [1, 1, 0] + [r * np.cos(ang), r * np.sin(ang), rest[o] + lift]
            vel = np.r_[rng.normal(size=2), 0] * u(0, 0.4 * self.object_motion[1]) / np.sqrt(2)
            centre[o] = start + (s - 0.5) * vel
            yaw[o] = u(0, 2 * np.pi) + u(-1, 1) * self.spin[1] * 0.5 * s[:, 0]

        light = np.array([np.cos(b := u(0, 2 * np.pi)), np.sin(b), 0.0])
        el = u(0.6, 1.2)
        light = light * np.cos(el) + [0, 0, np.sin(el)]
        # Textures: per surface (objects, then the ground) a sum of WAVES plane waves in surface coordinates
        # with log-uniform periods and amplitudes proportional to the period (a 1/f spectrum), blending the
        # surface's two colours. Periods stay above a few pixels at the usual distances, so the texture is
        # band-limited: a small motion moves it a little instead of scrambling it (hard checkers of 1-3 px
        # did), which is what lets a masked tubelet be predicted from the detail of visible ones.
        n_surf, K = n_obj + 1, self.WAVES
        direction = rng.normal(size=(n_surf, K, 3))
        direction[-1, :, 2] = 0  # the ground's waves run along it
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        period = np.exp(u(np.log(self.texture[0]), np.log(self.texture[1]), size=(n_surf, K)))
        period[-1] *= 2  # the ground is seen from further away and at a grazing angle
        amp = period / period.sum(-1, keepdims=True)
        waves = dict(
            k=direction * (2 * np.pi / period)[..., None], phase=u(0, 2 * np.pi, size=(n_surf, K)), amp=amp
        )
        return dict(
            eye=eye, rot=rot, extrinsics=ext, kind=kind, half=half, centre=centre, yaw=yaw, light=light,
            colors=u(0.15, 1.0, size=(n_obj, 2, 3)), waves=waves, ground=u(0.25, 0.75, size=(2, 3)),
        )  # fmt: skip

    # ------------------------------------------------------------------ rendering

    def _cast(self, sc, u, v):
        """Nearest hit along the rays through camera-plane points (u, v, 1), both broadcast to (T, M).

        Returns the world ray directions [(T, M)] * 3, the hit's z-depth (T, M) (inf: sky) and
        the surface id (T, M) int16 (-1: ground or sky).
        """
        f32, far = np.float32, self.far
        rot, eye = sc["rot"].astype(f32), sc["eye"].astype(f32)
        a = u * u + v * v + 1  # squared ray length
        # World ray directions d = R^T d_cam, one (T, M) array per component.
        d = [rot[:, 0, k, None] * u + rot[:, 1, k, None] * v + rot[:, 2, k, None] for k in range(3)]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # Ground plane z = 0, cut off at `far` (beyond is sky).
            best = np.where(d[2] < 0, -eye[:, 2, None] / d[2], np.inf).astype(
                f32
            )  # (T, M) nearest hit so far
            best[best > far] = np.inf
            ident = np.full(best.shape, -1, np.int16)
            for o in range(self.objects):
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

    def _render(self, sc):
        T, S, far = self.frames, self.size, self.far
        P = S * S
        f32 = np.float32
        eye, a = sc["eye"].astype(f32), self._a
        d, best, ident = self._cast(sc, self._cu, self._cv)  # (T, P) each

        # Shade each surface only where it won the depth test, as 1-D arrays over the flat T*P
        # pixels. A pixel's colour is palette[cid] * w1 + horizon * w2: scalar work per surface,
        # one (T*P, 3) pass at the end.
        n_obj = self.objects
        flat_t, idf = best.ravel(), ident.ravel()
        df = [x.ravel() for x in d]
        cid = np.empty(T * P, np.int16)  # palette entry: 2 per object, 2 for the ground, 1 for the sky
        mix = np.zeros(
            T * P, f32
        )  # texture value in [0, 1]: how far from a surface's first colour to its second
        w1, w2 = np.empty(T * P, f32), np.zeros(T * P, f32)
        lx, ly, lz = sc["light"].astype(f32)
        wk, wphase, wamp = (sc["waves"][k].astype(f32) for k in ("k", "phase", "amp"))

        def texture(surf, q):  # 0.5 + sum of the surface's plane waves at surface coordinates q [(n,)] * 3
            v = np.zeros_like(q[0])
            for j in range(self.WAVES):
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

    # ------------------------------------------------------------------ ground truth

    def _poses(self, sc):
        """Per-surface rigid poses, the ground (identity) appended last so id -1 indexes it."""
        centre = np.concatenate([sc["centre"], np.zeros((1, self.frames, 3))])  # (O+1, T, 3)
        yaw = np.concatenate([sc["yaw"], np.zeros((1, self.frames))])  # (O+1, T)
        return centre, yaw

    def _tracks(self, rng, sc, depth, seg, hit):
        T, S, N = self.frames, self.size, self.points
        P = S * S
        q = np.sort(rng.integers(0, T, size=N))  # (N,) query frames
        on_object = rng.random(N) < 0.5  # half the points on objects (when any are visible)
        pix = np.empty(N, np.int64)
        segf, visible = seg.reshape(T, P), hit < self.far / 2  # not at the horizon
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
        dcam = np.stack([self._cu[pix], self._cv[pix], np.ones(N, np.float32)], 1).astype(np.float64)
        z = depth.reshape(T, P)[q, pix].astype(np.float64)
        p = eye[q] + z[:, None] * np.einsum("nji,nj->ni", rot[q], dcam)  # (N, 3)
        centre, yaw = self._poses(sc)
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
        world = np.stack(
            [
                cs * local[:, None, 0] - sn * local[:, None, 1],
                sn * local[:, None, 0] + cs * local[:, None, 1],
                np.broadcast_to(local[:, None, 2], cs.shape),
            ],
            -1,
        )
        world += centre[obj]

        cam = np.einsum("tij,ntj->nti", rot, world) + sc["extrinsics"][None, :, :3, 3]  # (N, T, 3)
        f = self.focal * S
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
        _, seen, _ = self._cast(sc, uv[..., 0], uv[..., 1])  # (T, N) nearest depth along each ray
        occluded = ~inside | (seen.T < 0.99 * zc)
        return dict(
            tracks=xy.astype(np.float32), occluded=occluded, tracks3d=world.astype(np.float32),
            query_frame=q, track_object=obj.astype(np.int16),
        )  # fmt: skip

    def _boxes(self, seg):
        """Visible extent of each object from the segmentation: (O, T, 4) x0, y0, x1, y1 pixel edges."""
        n_obj, S = self.objects, self.size
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
