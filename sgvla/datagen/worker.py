"""One shard of work: replay its episodes, then write outcomes, statistics and the Parquet file.

`SimWorker` is the Ray actor class (one simulator owner per CPU core or GPU); `replay_shard` is
the plain function it runs, usable without Ray. The three files of a shard are written in a
fixed order, each atomically - episode outcomes, partial statistics, then the Parquet shard - so
whenever the shard's Parquet file exists under its final name the shard is complete, and a run
killed at any moment leaves either a finished shard or nothing that counts (see `plan.shard_done`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from sgvla.datagen.plan import ShardPlan, outcomes_path
from sgvla.datagen.replay import ReplayedEpisode, Replayer
from sgvla.datagen.sources import DemoFile, read_demo_file
from sgvla.dataset.atomic import write_json_atomic
from sgvla.dataset.schema import FEATURES, STATS_FIELDS, VECTOR_FIELDS
from sgvla.dataset.shards import rows_to_table, write_shard
from sgvla.dataset.stats import shard_stats, write_shard_stats
from sgvla.tasks import BUILTIN_TASK


@lru_cache(maxsize=64)
def _demo(path: str, subtask: str) -> DemoFile:
    return read_demo_file(Path(path), subtask)


def _columns(kept: list[ReplayedEpisode]) -> dict[str, list]:
    cols: dict[str, list] = {}
    for r in kept:
        for k, v in r.rows.items():
            cols.setdefault(k, []).extend(v)
    return cols


def write_shard_files(root: Path, shard: ShardPlan, results: list[ReplayedEpisode]) -> int:
    """Outcomes -> stats -> Parquet for one shard (kept episodes only); returns its row count."""
    kept = [r for r in sorted(results, key=lambda r: r.episode.episode_index) if r.status == "kept"]
    cols = _columns(kept) if kept else {k: [] for k in FEATURES}
    n = len(cols["index"])
    write_json_atomic(outcomes_path(root, shard.config, shard.split, shard.shard_index),
                      {"shard": shard.relpath, "episodes": [r.outcome() for r in results]})
    stats_cols = {k: np.asarray(cols[k], dtype=np.float32).reshape(n, VECTOR_FIELDS[k]) for k in STATS_FIELDS}
    stats_cols["episode_index"] = np.asarray(cols["episode_index"], dtype=np.int64)
    stats_cols["subtask"] = np.asarray(cols["subtask"], dtype=str)
    write_shard_stats(root, shard.config, shard.split, shard.shard_index, shard_stats(stats_cols))
    write_shard(Path(root) / shard.relpath, rows_to_table(cols))
    return n


def replay_shard(replayer: Replayer, root: Path, shard: ShardPlan, on_episode=None) -> dict:
    """Replay and write one shard; returns its summary (outcomes per episode, rows written)."""
    demo = _demo(shard.source, shard.episodes[0].subtask)
    results = replayer.replay(demo, list(shard.episodes), on_episode=on_episode)
    rows = write_shard_files(Path(root), shard, results)
    return {"shard_index": shard.shard_index, "rows": rows, "outcomes": [r.outcome() for r in results]}


class SimWorker:
    """Ray actor body: owns a `Replayer` (its simulators) for as long as the process lives.

    `board` names the `ProgressBoard` actor (looked up by name, so a restarted actor finds it).

    Built lazily on the first shard, so a restarted actor (after a crash) costs nothing until it
    is given work, and a failure to build the scene is reported as that shard's error.
    """

    def __init__(self, task: str, root: str, num_envs: int = 1, sim_backend: str = "physx_cpu",
                 board: str | None = None):
        self.task, self.root, self.board_name, self.board = task, Path(root), board, None
        self.num_envs, self.sim_backend = num_envs, sim_backend
        self.replayer: Replayer | None = None

    def pid(self) -> int:
        return os.getpid()

    def run_shard(self, shard_doc: dict, config: str, split: str, num_shards: int, attempt: int) -> dict:
        shard = ShardPlan.from_json(config, split, num_shards, shard_doc)
        if self.replayer is None:
            if self.task != BUILTIN_TASK:
                from sgvla.datagen.mshab import check_worker_ready

                check_worker_ready(self.task, (shard.episodes[0].subtask,))
            self.replayer = Replayer(self.task, self.num_envs, self.sim_backend)
        if self.board is None and self.board_name:
            import ray

            self.board = ray.get_actor(self.board_name)
        done = {"frames": 0, "episodes": 0}

        def report(result: ReplayedEpisode) -> None:
            done["frames"] += result.episode.length
            done["episodes"] += 1
            if self.board is not None:
                self.board.report.remote(shard.shard_index, attempt, done["frames"], done["episodes"])

        return replay_shard(self.replayer, self.root, shard, on_episode=report)


class ProgressBoard:
    """Tiny Ray actor the workers report per-episode progress to, polled by the driver's bar."""

    def __init__(self):
        self.partial: dict[int, tuple[int, int, int]] = {}

    def report(self, shard_index: int, attempt: int, frames: int, episodes: int) -> None:
        self.partial[shard_index] = (attempt, frames, episodes)

    def snapshot(self) -> dict[int, tuple[int, int, int]]:
        return dict(self.partial)
