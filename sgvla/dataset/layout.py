"""Where things live in a dataset folder (see the layout contract with `sgvla gen`).

Only this module knows the folder conventions beyond `schema.shard_path`; the card, statistics,
validator, info table and uploader all discover configs, splits and shards through it, so the
folder on disk (not a separate index) is the single source of truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sgvla.dataset.schema import STATS_PATH
from sgvla.errors import SgvlaError, load_json

SHARD_STATS_DIR = "meta/shards"
MANIFEST_PATH = "meta/manifest.json"
PLAN_PATH = "meta/plan.json"
CARD_PATH = "README.md"
_SHARD_RE = re.compile(r"^(?P<split>\w+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.parquet$")


@dataclass(frozen=True)
class Shard:
    """One Parquet shard on disk: `<config>/data/<split>-<i>-of-<n>.parquet`."""

    config: str
    split: str
    index: int
    count: int
    path: Path


def shard_stats_path(root: Path, config: str, split: str, shard_i: int) -> Path:
    """Partial statistics of one shard: `meta/shards/<config>/<split>-NNNNN.json`."""
    return Path(root) / SHARD_STATS_DIR / config / f"{split}-{shard_i:05d}.json"


def find_shards(root: Path) -> list[Shard]:
    """Every finished shard under `root`, sorted by (config, split, index); temp files are ignored."""
    root = Path(root)
    out = []
    for p in sorted(root.glob("*/data/*.parquet")):
        m = _SHARD_RE.match(p.name)
        if m:
            out.append(Shard(p.parent.parent.name, m["split"], int(m["i"]), int(m["n"]), p))
    return out


def group_shards(shards: list[Shard]) -> dict[str, dict[str, list[Shard]]]:
    """{config: {split: [shards]}} keeping the sorted order."""
    out: dict[str, dict[str, list[Shard]]] = {}
    for s in shards:
        out.setdefault(s.config, {}).setdefault(s.split, []).append(s)
    return out


def require_dataset(root: Path) -> list[Shard]:
    """The shards of `root`, or a SgvlaError saying why `root` is not a dataset folder."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise SgvlaError(f"{root} is a file, not a dataset folder: pass the --out folder of `sgvla gen`")
    if not root.is_dir():
        raise SgvlaError(f"dataset folder {root} does not exist: pass the --out folder of `sgvla gen`")
    shards = find_shards(root)
    if not shards:
        raise SgvlaError(f"{root} holds no <task>/data/<split>-NNNNN-of-NNNNN.parquet shards: "
                         "pass a folder written by `sgvla gen`")
    return shards


def open_shard(path: Path) -> pq.ParquetFile:
    """The shard's Parquet file with its footer read, or one SgvlaError for a file that is cut short
    (a full disk, a killed copy): readers never meet a raw pyarrow error for it."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise SgvlaError(f"{path} is not a readable Parquet file ({e}): it was cut short or damaged; "
                         "re-run the `sgvla gen` command that wrote the folder (same flags): it rebuilds "
                         "such shards") from e


def shard_rows(path: Path) -> int:
    """Row count from the shard's footer (see `open_shard` for a damaged file)."""
    with open_shard(path) as pf:
        return pf.metadata.num_rows


def read_json(path: Path, fix: str = "re-run `sgvla gen` on the folder to rewrite it") -> dict | None:
    """Parsed JSON, or None when the file is absent (a corrupt one is `errors.load_json`'s error)."""
    path = Path(path)
    return load_json(path, fix) if path.exists() else None


def stats_path(root: Path) -> Path:
    return Path(root) / STATS_PATH


def fmt_bytes(n: float) -> str:
    """Human-readable size in decimal units (as the Hub shows them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
