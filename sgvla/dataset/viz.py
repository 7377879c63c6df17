"""`sgvla viz`: one episode as pictures -- a contact sheet (PNG) and an animation (GIF).

The contact sheet shows evenly spaced frames of head and hand RGB with the target mask overlaid
in red, both depth images (Eq. 1 mapping, near = bright), and plots of qpos, the base x-y path and
is_grasped over time; the GIF plays every frame of the four views side by side at the control
rate. Both are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sgvla.dataset.atomic import write_atomic
from sgvla.dataset.layout import group_shards, open_shard, require_dataset
from sgvla.dataset.schema import FEATURES, FPS, decode_png
from sgvla.errors import SgvlaError

SHEET_FRAMES = 8
MASK_COLOUR = np.array([255, 40, 40], np.float32)
EDGE_COLOUR = np.array([255, 255, 0], np.uint8)


def load_episode(root: Path, episode: int, config: str | None, split: str) -> dict[str, list]:
    """Columns of one episode (rows in frame order), with a clear error for a bad choice."""
    groups = group_shards(require_dataset(root))
    config = config or sorted(groups)[0]
    if config not in groups:
        raise SgvlaError(f"--config {config!r} is not in {root}: choose one of {', '.join(sorted(groups))}")
    if split not in groups[config]:
        raise SgvlaError(f"--split {split!r} is not in {root}/{config}: choose one of "
                         f"{', '.join(sorted(groups[config]))}")
    seen = []
    for shard in groups[config][split]:
        with open_shard(shard.path) as pf:
            eps = pf.read(columns=["episode_index"]).column("episode_index")
        if pc.any(pc.equal(eps, episode)).as_py():
            t = pq.read_table(shard.path, filters=[("episode_index", "==", episode)])
            return t.sort_by("frame_index").to_pydict()
        seen.append(pc.min_max(eps).as_py())
    lo = min(s["min"] for s in seen)
    hi = max(s["max"] for s in seen)
    raise SgvlaError(f"--episode {episode} is not in {config}/{split} (episode_index runs {lo}..{hi})")


def depth_colour(depth_mm: np.ndarray) -> np.ndarray:
    """uint16 millimetres -> uint8 RGB via Eq. 1 (`transforms.depth_to_unit`) and the viridis colour map."""
    import torch
    from matplotlib import colormaps

    from sgvla.transforms import depth_to_unit

    p = depth_to_unit(torch.from_numpy(depth_mm.astype(np.int32))).numpy()
    return (colormaps["viridis"](p)[..., :3] * 255).astype(np.uint8)


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB with the mask's pixels tinted red and its outline yellow (visible on any background)."""
    out = rgb.astype(np.float32)
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * MASK_COLOUR
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    out = out.astype(np.uint8)
    out[m & ~inner] = EDGE_COLOUR
    return out


def frame_views(cols: dict[str, list], t: int) -> list[np.ndarray]:
    """The four panels of frame t: head RGB+mask, hand RGB+mask, head depth, hand depth."""
    return [overlay(decode_png(cols["head_rgb"][t]), decode_png(cols["head_mask"][t])),
            overlay(decode_png(cols["hand_rgb"][t]), decode_png(cols["hand_mask"][t])),
            depth_colour(decode_png(cols["head_depth"][t])), depth_colour(decode_png(cols["hand_depth"][t]))]


def _title(cols: dict[str, list], config: str, split: str) -> str:
    sub = FEATURES["subtask"].int2str(cols["subtask"][0])
    ok = "success" if cols["success"][-1] else "no success"
    return (f"{config}/{split} episode {cols['episode_index'][0]} - {sub}: \"{cols['instruction'][0]}\" - "
            f"{len(cols['frame_index'])} steps ({len(cols['frame_index']) / FPS:.1f} s), {ok}")


def contact_sheet(cols: dict[str, list], title: str, out: Path) -> Path:
    """Frames x views grid plus qpos / base path / grasp plots, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(cols["frame_index"])
    picks = np.unique(np.linspace(0, n - 1, min(SHEET_FRAMES, n)).round().astype(int))
    labels = ("head RGB + mask", "hand RGB + mask", "head depth", "hand depth")
    fig = plt.figure(figsize=(2 * max(len(picks), 4), 12), constrained_layout=True)
    grid = fig.add_gridspec(6, len(picks), height_ratios=[1, 1, 1, 1, 1.3, 1.3])
    for j, t in enumerate(picks):
        for i, img in enumerate(frame_views(cols, int(t))):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels[i])
            if i == 0:
                ax.set_title(f"t={t}")
    time = np.asarray(cols["frame_index"]) / FPS
    half = max(1, len(picks) // 2)
    ax = fig.add_subplot(grid[4, :])
    ax.plot(time, np.asarray(cols["qpos"]))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("qpos (rad / m)")
    ax = fig.add_subplot(grid[5, :half])
    base = np.asarray(cols["base_pose"])
    ax.plot(base[:, 0], base[:, 1], "-", color="tab:blue")
    ax.plot(base[0, 0], base[0, 1], "o", color="tab:green", label="start")
    ax.plot(base[-1, 0], base[-1, 1], "s", color="tab:red", label="end")
    ax.set_xlabel("base x (m)")
    ax.set_ylabel("base y (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best", fontsize=8)
    ax = fig.add_subplot(grid[5, half:])
    ax.step(time, np.asarray(cols["is_grasped"], float), where="post", label="is_grasped")
    ax.plot(time, np.asarray(cols["reward"]), label="reward")
    ax.set_xlabel("time (s)")
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    try:
        return write_atomic(out, lambda p: fig.savefig(p, dpi=80, format="png"))
    finally:
        plt.close(fig)


def animation(cols: dict[str, list], out: Path) -> Path:
    """Every frame's four views side by side, as a looping GIF at the control rate."""
    from PIL import Image as PILImage

    frames = [PILImage.fromarray(np.concatenate(frame_views(cols, t), axis=1))
              for t in range(len(cols["frame_index"]))]

    def write(p: Path) -> None:
        frames[0].save(p, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / FPS),
                       loop=0)

    return write_atomic(out, write)


def visualize_episode(path: Path, episode: int = 0, config: str | None = None, split: str = "train",
                      out: Path | None = None) -> list[Path]:
    """Write the contact sheet PNG (`out`, default outputs/viz/...) and a GIF next to it."""
    root = Path(path)
    cols = load_episode(root, episode, config, split)
    config = config or FEATURES["task"].int2str(cols["task"][0])
    out = Path(out) if out else Path("outputs/viz") / f"{config}_{split}_episode{episode}.png"
    if out.suffix.lower() != ".png":
        raise SgvlaError(f"--out {out} must end in .png (the GIF is written next to it)")
    sheet = contact_sheet(cols, _title(cols, config, split), out)
    gif = animation(cols, out.with_suffix(".gif"))
    return [sheet, gif]
