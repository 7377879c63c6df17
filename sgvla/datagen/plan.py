"""The generation plan: which episodes go into which shard, with their row ids, fixed up front.

Resuming and crash safety both rest on this plan being a pure function of the inputs (demo files,
subtasks, --episodes, --episodes-per-shard): episode ids and global row ids are assigned here,
not in completion order, and a shard is only ever written whole under its final name. A re-run
recomputes the plan, checks it equals the stored `meta/plan.json`, and produces exactly the shards
that are missing, so a killed run can lose or duplicate nothing.

A shard holds consecutive episodes of ONE demo file (so a bad file fails only its own shards and a
worker keeps one simulator for a whole shard) and of one config (task).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sgvla.datagen.sources import DemoFile
from sgvla.dataset.atomic import write_json_atomic
from sgvla.dataset.layout import PLAN_PATH, shard_rows, shard_stats_path
from sgvla.dataset.schema import shard_path
from sgvla.errors import SgvlaError

PLAN_VERSION = 1
OUTCOMES_DIR = "meta/outcomes"


@dataclass(frozen=True)
class PlannedEpisode:
    """One episode of the dataset and where it is replayed from."""

    episode_index: int
    subtask: str
    source: str  # demo .h5, absolute path
    traj: str
    length: int
    index_offset: int


@dataclass(frozen=True)
class ShardPlan:
    """One Parquet shard: whole episodes of one demo file, in episode_index order."""

    config: str
    split: str
    shard_index: int
    num_shards: int
    episodes: tuple[PlannedEpisode, ...]

    @property
    def relpath(self) -> str:
        return shard_path(self.config, self.split, self.shard_index, self.num_shards)

    @property
    def source(self) -> str:
        return self.episodes[0].source

    @property
    def frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def to_json(self) -> dict:
        return {"shard_index": self.shard_index, "episodes": [asdict(e) for e in self.episodes]}

    @classmethod
    def from_json(cls, config: str, split: str, num_shards: int, d: dict) -> ShardPlan:
        eps = tuple(PlannedEpisode(**e) for e in d["episodes"])
        return cls(config, split, int(d["shard_index"]), num_shards, eps)


def _take(files: list[DemoFile], n: int) -> list[tuple[DemoFile, list]]:
    """First episodes of each file, `n` in all (0 = all) spread as evenly as the files allow."""
    if n <= 0:
        return [(f, list(f.episodes)) for f in files]
    quota = [0] * len(files)
    left = n
    while left > 0:
        progressed = False
        for i, f in enumerate(files):
            if left and quota[i] < len(f.episodes):
                quota[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return [(f, list(f.episodes[:q])) for f, q in zip(files, quota, strict=True) if q]


def build_plan(config: str, split: str, files: dict[str, list[DemoFile]], episodes: int,
               episodes_per_shard: int) -> list[ShardPlan]:
    """Shards for one (config, split): subtasks in the task's order, files sorted, episodes in order."""
    groups: list[list[tuple[DemoFile, object]]] = []
    for subtask in files:
        have = sum(len(f.episodes) for f in files[subtask])
        if episodes > have:  # say so: a dataset smaller than asked for must not pass unnoticed
            print(f"note: --episodes {episodes} but the demos hold {have} episode(s) of {subtask}: "
                  f"recording {have}", file=sys.stderr)
        for f, eps in _take(sorted(files[subtask], key=lambda f: str(f.path)), episodes):
            # MS-HAB: episodes of one scene together, so a worker rebuilds the apartment only when
            # the scene changes (a stable sort: other files keep their order)
            eps = sorted(eps, key=lambda e: int(e.reset_idxs.get("build_config_idx", 0)))
            for i in range(0, len(eps), episodes_per_shard):
                groups.append([(f, e) for e in eps[i:i + episodes_per_shard]])
    shards, ep_index, offset = [], 0, 0
    for gi, group in enumerate(groups):
        planned = []
        for f, e in group:
            planned.append(PlannedEpisode(ep_index, f.subtask, str(Path(f.path).resolve()), e.traj,
                                          e.length, offset))
            ep_index += 1
            offset += e.length
        shards.append(ShardPlan(config, split, gi, len(groups), tuple(planned)))
    return shards


def plan_key(config: str, split: str) -> str:
    return f"{config}/{split}"


def _plan_doc(shards: list[ShardPlan]) -> dict:
    return {"num_shards": len(shards), "shards": [s.to_json() for s in shards]}


def read_plans(root: Path) -> dict:
    p = Path(root) / PLAN_PATH
    if not p.exists():
        return {}
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        return dict(doc["plans"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        # The plan is a pure function of the demos and flags: recompute it. Shards already on disk
        # are kept only where their recorded episodes match it (`shard_done`), so nothing is lost.
        print(f"note: {p} is unreadable ({type(e).__name__}): rebuilding the plan from the demos and "
              "flags; shards that match it are kept", file=sys.stderr)
        return {}


def load_plan(root: Path, config: str, split: str) -> list[ShardPlan] | None:
    doc = read_plans(root).get(plan_key(config, split))
    if doc is None:
        return None
    return [ShardPlan.from_json(config, split, doc["num_shards"], s) for s in doc["shards"]]


def store_plan(root: Path, config: str, split: str, shards: list[ShardPlan]) -> None:
    """Record the plan, or check it equals the one already there (a different one needs --overwrite)."""
    plans = read_plans(root)
    key = plan_key(config, split)
    new = _plan_doc(shards)
    if key in plans:
        if plans[key] != new:
            raise SgvlaError(f"{root} already holds a {key} dataset planned from other demos or flags "
                             "(--episodes, --subtask, --episodes-per-shard, --demos): re-run with the same "
                             "flags to resume it, or add --overwrite to start over")
        return
    plans[key] = new
    write_json_atomic(Path(root) / PLAN_PATH, {"version": PLAN_VERSION, "plans": plans})


def outcomes_path(root: Path, config: str, split: str, shard_index: int) -> Path:
    """Per-shard episode outcomes (kept / dropped with reason), written before the stats and shard."""
    return Path(root) / OUTCOMES_DIR / config / f"{split}-{shard_index:05d}.json"


def shard_done(root: Path, shard: ShardPlan) -> bool:
    """A shard counts only when its Parquet file, stats and outcomes are all in place.

    They are written outcomes -> stats -> Parquet (each atomically), so the Parquet file's presence
    implies the others; checking all three also redoes shards whose metadata someone deleted.
    """
    root = Path(root)
    outcomes = outcomes_path(root, shard.config, shard.split, shard.shard_index)
    if not ((root / shard.relpath).is_file() and outcomes.is_file()
            and shard_stats_path(root, shard.config, shard.split, shard.shard_index).is_file()):
        return False
    return _shard_intact(root, shard, outcomes)


def _shard_intact(root: Path, shard: ShardPlan, outcomes: Path) -> bool:
    """The shard holds this plan's episodes and its Parquet file is whole: the outcomes name the
    planned episodes, and the footer reads and counts the rows of the kept ones. A file cut short
    (disk full, a copy killed half way) or left by another plan is rebuilt, not counted done."""
    try:
        recorded = json.loads(outcomes.read_text(encoding="utf-8"))["episodes"]
        rows = shard_rows(root / shard.relpath)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, SgvlaError):
        recorded, rows = None, -1
    planned = [(e.episode_index, f"{e.source}:{e.traj}") for e in shard.episodes]
    return (recorded is not None and [(o.get("episode_index"), o.get("source")) for o in recorded] == planned
            and rows == sum(o.get("length", 0) for o in recorded if o.get("status") == "kept"))
