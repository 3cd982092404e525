"""Contact sheets: look at clips and their ground truth before training on them."""

from pathlib import Path

import numpy as np


def write_contact_sheet(world, indices, out_path, max_frames=8):
    """PNG with, per clip, three rows over frames: RGB, depth, RGB + tracks and boxes.

    Tracks are green where visible and red where occluded (in-frame only); boxes
    are drawn where the object is visible. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    indices = list(indices)
    clips = [world[i] for i in indices]
    T = clips[0]["video"].shape[0]
    frames = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    rows = 3 * len(clips)
    fig, axes = plt.subplots(rows, len(frames), figsize=(1.6 * len(frames), 1.6 * rows), squeeze=False)
    names = getattr(world, "CLASSES", None)
    for k, (i, clip) in enumerate(zip(indices, clips, strict=True)):
        video, depth = clip["video"], clip.get("depth")
        S = video.shape[2]
        # Depth on a shared log scale per clip; the sky (far value) is shown as the farthest colour.
        if depth is not None:
            near, far = np.log(depth.min()), np.log(np.percentile(depth, 99))
        for j, t in enumerate(frames):
            a_rgb, a_depth, a_gt = axes[3 * k, j], axes[3 * k + 1, j], axes[3 * k + 2, j]
            a_rgb.imshow(video[t])
            if depth is not None:
                a_depth.imshow(np.log(depth[t]), cmap="turbo_r", vmin=near, vmax=far)
            a_gt.imshow(video[t])
            if "tracks" in clip:
                xy, occ = clip["tracks"][:, t], clip["occluded"][:, t]
                inside = (xy >= 0).all(1) & (xy < S).all(1)
                a_gt.scatter(*xy[~occ].T, s=4, c="lime", linewidths=0)
                a_gt.scatter(*xy[occ & inside].T, s=4, c="red", linewidths=0)
            if "boxes" in clip:
                for o in np.flatnonzero(clip["box_visible"][:, t]):
                    x0, y0, x1, y1 = clip["boxes"][o, t]
                    a_gt.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=0.8))
            for a in (a_rgb, a_depth, a_gt):
                a.set_xticks([]), a.set_yticks([])
                a.set_xlim(0, S), a.set_ylim(video.shape[1], 0)
            if k == 0:
                a_rgb.set_title(f"t={t}", fontsize=7)
        title = f"clip {i}"
        if names is not None and "label" in clip:
            title += f": {names[clip['label']]}"
        axes[3 * k, 0].set_ylabel(title, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.2)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def write_world_preview(
    out_path: Path, clips: int, frames: int, size: int, seed: int, split: str
) -> list[str]:
    """`sweep world preview`: a contact sheet of the synthetic world's first `clips` clips of `split`.
    -> the world's object classes."""
    from data4d.world import SyntheticWorld

    out_path.parent.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(frames=frames, size=size, seed=seed, split=split)
    write_contact_sheet(world, list(range(clips)), out_path)
    return list(world.CLASSES)
