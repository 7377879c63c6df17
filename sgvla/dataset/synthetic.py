"""Small synthetic datasets written exactly like `sgvla gen` writes real ones.

Tests and benchmarks of the dataset tools need folders without running the simulator. The rows
here are random but shaped like renders (smooth depth in millimetres, a rectangular target mask,
noisy RGB), and they go through the same path as generated data: `schema.encode_*`,
`shards.rows_to_table` + `write_shard`, `stats.shard_stats` + `write_shard_stats`, and
`finalize.finalize_dataset`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgvla.dataset.finalize import finalize_dataset
from sgvla.dataset.schema import (
    FEATURES,
    FPS,
    IMAGE_SIZE,
    STATS_FIELDS,
    VECTOR_FIELDS,
    encode_depth,
    encode_mask,
    encode_rgb,
    shard_path,
)
from sgvla.dataset.shards import rows_to_table, write_shard
from sgvla.dataset.stats import shard_stats, write_shard_stats
from sgvla.tasks import TASK_SUBTASKS


def _frame_images(rng: np.random.Generator, t: int, size: int) -> dict:
    yy, xx = np.mgrid[0:size, 0:size]
    out = {}
    for cam in ("head", "hand"):
        base = ((xx + yy + 7 * t) % 256).astype(np.float32)
        rgb = np.stack([base, 255 - base, np.full_like(base, 40 * (cam == "hand"))], -1)
        rgb = np.clip(rgb + rng.normal(0, 2, rgb.shape), 0, 255).astype(np.uint8)
        depth = 400.0 + 25.0 * yy + 3.0 * xx + 50.0 * t + rng.normal(0, 2, (size, size))
        mask = np.zeros((size, size), bool)
        r0 = (5 + 3 * t) % (size - 10)
        mask[r0:r0 + 8, size // 3:size // 3 + 10] = True
        out[f"{cam}_rgb"] = encode_rgb(rgb)
        out[f"{cam}_depth"] = encode_depth(depth)
        out[f"{cam}_mask"] = encode_mask(mask)
    return out


def episode_rows(rng: np.random.Generator, config: str, episode_index: int, length: int,
                 index_offset: int, subtask: str, size: int = IMAGE_SIZE) -> dict[str, list]:
    """Columns of one synthetic episode (python lists, ready for `rows_to_table`)."""
    cols: dict[str, list] = {name: [] for name in FEATURES}
    for t in range(length):
        vec = {k: rng.normal(0, 0.5, n).astype(np.float32) for k, n in VECTOR_FIELDS.items()}
        vec["action"] = np.clip(vec["action"], -1, 1)
        if subtask == "close" and t % 2:
            vec["obj_pose"] = np.zeros(7, np.float32)
        row = {
            "index": index_offset + t, "episode_index": episode_index, "frame_index": t,
            "timestamp": t / FPS, "task": config, "subtask": subtask,
            "instruction": f"{subtask} the red bowl", "target": "red_bowl",
            "source": f"synthetic.h5:traj_{episode_index}",
            **_frame_images(rng, t, size), **{k: v.tolist() for k, v in vec.items()},
            "is_grasped": bool(t >= length // 2), "reward": float(t) / length, "success": t == length - 1,
        }
        for k, v in row.items():
            cols[k].append(v)
    return cols


def write_synthetic_dataset(root: Path, config: str = "mini_kitchen",
                            episodes: dict[str, list[int]] | None = None, episodes_per_shard: int = 2,
                            seed: int = 0, size: int = IMAGE_SIZE, finalize: bool = True) -> Path:
    """Write `root` with episodes of the given lengths per split; subtasks cycle over the task's."""
    episodes = episodes or {"train": [5, 7, 4, 6], "val": [5, 3]}
    rng = np.random.default_rng(seed)
    subtasks = TASK_SUBTASKS[config]
    for split, lengths in episodes.items():
        n_shards = -(-len(lengths) // episodes_per_shard)
        offset = 0
        for i in range(n_shards):
            cols: dict[str, list] = {name: [] for name in FEATURES}
            for ep in range(i * episodes_per_shard, min(len(lengths), (i + 1) * episodes_per_shard)):
                part = episode_rows(rng, config, ep, lengths[ep], offset, subtasks[ep % len(subtasks)], size)
                offset += lengths[ep]
                for k in cols:
                    cols[k].extend(part[k])
            stats = shard_stats({**{k: np.asarray(cols[k], np.float32) for k in STATS_FIELDS},
                                 "episode_index": np.asarray(cols["episode_index"]),
                                 "subtask": np.asarray(cols["subtask"])})
            write_shard_stats(root, config, split, i, stats)
            write_shard(Path(root) / shard_path(config, split, i, n_shards), rows_to_table(cols))
    if finalize:
        cmd = f"synthetic: write_synthetic_dataset({config!r}, seed={seed})"
        finalize_dataset(root, cmd, ["synthetic.h5"])
    return Path(root)
