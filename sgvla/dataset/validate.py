"""`sgvla validate`: everything a consumer of the dataset relies on, checked and reported at once.

Checks, each reported per shard (never one line per row):

* layout: shard names `<split>-NNNNN-of-NNNNN.parquet`, every index 0..N-1 present for a
  (config, split), config names are known tasks, no stray Parquet files;
* schema: each shard's Arrow schema and its `huggingface` metadata equal `schema.FEATURES`;
* episodes: rows sorted by (episode_index, frame_index); frame_index 0..T-1 without gaps; an
  episode lives in exactly one shard; `index` strictly increasing per (config, split); `task`
  equals the config; one subtask per episode; timestamp = frame_index / FPS;
* values: no nulls; no NaN/inf in any float column;
* images: every cell decodes, with the schema's mode and size (RGB 8-bit, depth 16-bit, masks
  1-bit and therefore binary);
* statistics: one partial-statistics file per shard agreeing with its rows; meta/stats.json
  present and equal to a direct recomputation from the Parquet vectors (quantiles within the
  merge's documented rank error);
* card: README.md present, its YAML parses, lists every config/split with the right row count
  and the schema's features.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features
from tqdm import tqdm

from sgvla.dataset.layout import (
    CARD_PATH,
    Shard,
    group_shards,
    read_json,
    require_dataset,
    shard_stats_path,
)
from sgvla.dataset.schema import (
    DEPTH_VIEWS,
    FEATURES,
    FPS,
    IMAGE_FIELDS,
    IMAGE_SIZE,
    MASK_FIELDS,
    RGB_VIEWS,
    STATS_FIELDS,
    STATS_PATH,
    VECTOR_FIELDS,
    pose_present,
)
from sgvla.dataset.stats import EXACT_ROWS, QUANTILES
from sgvla.errors import SgvlaError
from sgvla.tasks import TASKS

TABULAR_FIELDS = [f for f in FEATURES if f not in IMAGE_FIELDS]
FLOAT_FIELDS = [*VECTOR_FIELDS, "timestamp", "reward"]
IMAGE_MODES = {**dict.fromkeys(RGB_VIEWS, "RGB"), **dict.fromkeys(DEPTH_VIEWS, "I;16"),
               **dict.fromkeys(MASK_FIELDS, "1")}
#: Tolerances for stats.json against a recomputation (float32 data, float64 accumulation).
STATS_RTOL, STATS_ATOL = 1e-4, 1e-5


def validate_dataset(path: Path) -> list[str]:
    """Every problem found in the dataset folder `path` (empty list = valid)."""
    root = Path(path)
    shards = require_dataset(root)
    problems = check_layout(root, shards)
    tables: dict[Path, pa.Table] = {}
    num_rows: dict[Path, int] = {}  # per readable shard, from its footer (read once per shard)
    for shard in shards:
        try:
            pf = pq.ParquetFile(shard.path)
        except (pa.ArrowException, OSError) as e:
            problems.append(f"{shard.path}: not a readable Parquet file ({e})")
            continue
        with pf:
            num_rows[shard.path] = pf.metadata.num_rows
            schema_problems = check_schema(shard, pf)
            problems += schema_problems
            if not schema_problems:
                tables[shard.path] = pf.read(columns=TABULAR_FIELDS)
    for config, splits in group_shards(shards).items():
        for split, group in splits.items():
            readable = [(s, tables[s.path]) for s in group if s.path in tables]
            problems += _check_episodes(config, split, readable)
    readable = [s for s in shards if s.path in tables]
    problems += _check_all_images(readable, sum(num_rows[s.path] for s in readable))
    problems += _check_shard_stats(root, shards, tables)
    problems += _check_stats(root, shards, tables)
    problems += _check_card(root, shards, num_rows)
    return problems


# ---------------------------------------------------------------- layout and schema


def check_layout(root: Path, shards: list[Shard]) -> list[str]:
    """Shard file names and numbering: stray files, disagreeing totals, missing or extra indices."""
    problems = []
    known = {s.path for s in shards}
    for p in sorted(root.glob("*/data/*.parquet")):
        if p not in known:
            problems.append(f"{p}: stray Parquet file (not <split>-NNNNN-of-NNNNN.parquet): move it out")
    for config, splits in group_shards(shards).items():
        if config not in TASKS:
            problems.append(f"{root / config}: config {config!r} is not a known task ({', '.join(TASKS)})")
        for split, group in splits.items():
            counts = sorted({s.count for s in group})
            if len(counts) > 1:
                problems.append(f"{root / config / 'data'}: {split} shards disagree on their total {counts}")
            have = {s.index for s in group}
            missing = sorted(set(range(max(counts))) - have)
            extra = sorted(i for i in have if i >= max(counts))
            if missing:
                problems.append(f"{root / config / 'data'}: {split} shards {missing} of {max(counts)} "
                                "are missing")
            if extra:
                problems.append(f"{root / config / 'data'}: {split} shard indices {extra} are beyond the "
                                f"total {max(counts)}")
    return problems


def check_schema(shard: Shard, pf: pq.ParquetFile) -> list[str]:
    """Columns, types, row groups and the `huggingface` metadata of one shard against the schema."""
    schema = pf.schema_arrow
    want = FEATURES.arrow_schema
    problems = []
    names, want_names = set(schema.names), set(want.names)
    if names != want_names:
        problems.append(f"{shard.path}: columns differ from the schema (missing "
                        f"{sorted(want_names - names)}, extra {sorted(names - want_names)})")
    for f in want:
        if f.name in names and schema.field(f.name).type != f.type:
            problems.append(f"{shard.path}: column {f.name!r} has type {schema.field(f.name).type}, "
                            f"the schema says {f.type}")
    meta_data = pf.metadata
    if any(meta_data.row_group(i).num_rows == 0 for i in range(meta_data.num_row_groups)):
        problems.append(f"{shard.path}: holds an empty row group, which `datasets` cannot load; rewrite it "
                        "with sgvla.dataset.shards.write_shard")
    if not problems:
        meta = schema.metadata or {}
        if b"huggingface" not in meta:
            problems.append(f"{shard.path}: no 'huggingface' schema metadata (write shards with "
                            "sgvla.dataset.shards.write_shard)")
        elif Features.from_arrow_schema(schema) != FEATURES:
            problems.append(f"{shard.path}: its 'huggingface' metadata describes other features "
                            "than the schema")
    return problems


# ---------------------------------------------------------------- rows


def _column_values(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_fixed_size_list(col.type):
        return np.asarray(col.combine_chunks().flatten()).reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False)


def _first(mask: np.ndarray, ids: np.ndarray) -> str:
    return f"{int(mask.sum())} row(s), first at index {int(ids[np.argmax(mask)])}"


def _check_values(shard: Shard, t: pa.Table) -> list[str]:
    problems = []
    for name in t.column_names:
        nulls = t.column(name).null_count
        if nulls:
            problems.append(f"{shard.path}: {nulls} null value(s) in {name!r}")
    ids = _column_values(t, "index")
    if not len(ids):
        return problems  # a shard whose episodes were all dropped is empty, and valid
    for name in FLOAT_FIELDS:
        x = _column_values(t, name)
        bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if bad.any():
            problems.append(f"{shard.path}: NaN/inf in {name!r}: {_first(bad, ids)}")
    return problems


def _check_episode_rows(shard: Shard, config: str, t: pa.Table) -> list[str]:
    problems = []
    ep, fr, ids = _column_values(t, "episode_index"), _column_values(t, "frame_index"), _column_values(t, "index")
    order = np.lexsort((fr, ep))
    if not np.array_equal(order, np.arange(len(ep))):
        problems.append(f"{shard.path}: rows are not sorted by (episode_index, frame_index)")
    tasks = set(_column_values(t, "task").tolist())
    if config in TASKS and tasks - {FEATURES["task"].str2int(config)}:  # unknown configs: check_layout
        names = sorted(FEATURES["task"].int2str(int(i)) for i in tasks)
        problems.append(f"{shard.path}: task column holds {names}, the config is {config!r}")
    ts = _column_values(t, "timestamp")
    bad_ts = np.abs(ts - fr / FPS) > 1e-3
    if bad_ts.any():
        problems.append(f"{shard.path}: timestamp != frame_index / {FPS}: {_first(bad_ts, ids)}")
    sub = _column_values(t, "subtask")
    for e in np.unique(ep):
        sel = ep == e
        frames = np.sort(fr[sel])
        if not np.array_equal(frames, np.arange(len(frames))):
            missing = sorted(set(range(int(frames.max()) + 1)) - set(frames.tolist()))[:5]
            problems.append(f"{shard.path}: episode {int(e)} frames are not 0..T-1 (have {len(frames)}, "
                            f"max {int(frames.max())}, missing e.g. {missing}, duplicates "
                            f"{len(frames) - len(set(frames.tolist()))})")
        if len(np.unique(sub[sel])) > 1:
            problems.append(f"{shard.path}: episode {int(e)} mixes subtasks")
    return problems


def _check_episodes(config: str, split: str, group: list[tuple[Shard, pa.Table]]) -> list[str]:
    problems = []
    owner: dict[int, Path] = {}
    last_index = -1
    for shard, t in group:
        problems += _check_values(shard, t)
        problems += _check_episode_rows(shard, config, t)
        for e in np.unique(_column_values(t, "episode_index")).tolist():
            if e in owner:
                problems.append(f"{shard.path}: episode {e} is split across shards (also in {owner[e]})")
            owner.setdefault(e, shard.path)
        ids = _column_values(t, "index")
        if len(ids) and (ids[0] <= last_index or np.any(np.diff(ids) <= 0)):
            problems.append(f"{shard.path}: 'index' is not strictly increasing within {config}/{split}")
        last_index = int(ids[-1]) if len(ids) else last_index
    return problems


# ---------------------------------------------------------------- images


def _check_image(field: str, cell: dict | None) -> str | None:
    from PIL import Image as PILImage

    if cell is None or not cell.get("bytes"):
        return "no image bytes"
    try:
        im = PILImage.open(io.BytesIO(cell["bytes"]))
        im.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure is the finding
        return f"undecodable ({type(e).__name__})"
    if im.size != (IMAGE_SIZE, IMAGE_SIZE):
        return f"size {im.size}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
    if im.mode != IMAGE_MODES[field]:
        if field in MASK_FIELDS and len(np.unique(np.asarray(im))) > 2:
            return f"mask is not binary (mode {im.mode}, {len(np.unique(np.asarray(im)))} values)"
        return f"mode {im.mode}, expected {IMAGE_MODES[field]}"
    return None


def check_shard_images(path: Path) -> list[str]:
    """Decode every image cell of one shard; one problem line per (field, kind of defect)."""
    found: dict[tuple[str, str], list[int]] = {}
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=256, columns=["index", *IMAGE_FIELDS]):
        ids = batch.column("index").to_pylist()
        for field in IMAGE_FIELDS:
            for i, cell in zip(ids, batch.column(field).to_pylist(), strict=True):
                err = _check_image(field, cell)
                if err:
                    found.setdefault((field, err), []).append(i)
    return [f"{path}: {field} {err}: {len(rows)} row(s), first at index {rows[0]}"
            for (field, err), rows in found.items()]


def _check_all_images(shards: list[Shard], rows: int) -> list[str]:
    """Images of `shards` (`rows` in all), in worker processes when there are many."""
    paths = [s.path for s in shards]
    workers = min(len(paths), os.cpu_count() or 1)
    bar = dict(total=len(paths), desc="checking images", unit="shard", disable=rows < 5000)
    if workers <= 1 or rows < 5000:
        return [p for path in tqdm(paths, **bar) for p in check_shard_images(path)]
    with ProcessPoolExecutor(workers) as pool:
        return [p for res in tqdm(pool.map(check_shard_images, paths), **bar) for p in res]


# ---------------------------------------------------------------- statistics and card


def _check_shard_stats(root: Path, shards: list[Shard], tables: dict[Path, pa.Table]) -> list[str]:
    problems = []
    for s in shards:
        p = shard_stats_path(root, s.config, s.split, s.index)
        try:
            st = read_json(p)
        except SgvlaError as e:
            problems.append(str(e))
            continue
        if st is None:
            problems.append(f"{p}: missing (statistics of {s.path}); re-run `sgvla gen` on the folder")
        elif s.path in tables and st.get("num_transitions") != tables[s.path].num_rows:
            problems.append(f"{p}: counts {st.get('num_transitions')} transitions, the shard has "
                            f"{tables[s.path].num_rows} rows")
    return problems


def _recompute(tables: list[pa.Table]) -> dict[str, np.ndarray]:
    out = {}
    for name in STATS_FIELDS:
        x = np.concatenate([_column_values(t, name) for t in tables]).astype(np.float64)
        out[name] = x[pose_present(x)] if name == "obj_pose" else x
    return out


def _compare_field(name: str, got: dict, x: np.ndarray, exact_q: bool) -> list[str]:
    if got.get("count") != len(x):
        return [f"count {got.get('count')} != {len(x)} rows"]
    if not len(x):
        return []
    bad = []
    want = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0)}
    for key, ref in want.items():
        v = np.asarray(got.get(key, np.nan), np.float64)
        if v.shape != ref.shape or not np.allclose(v, ref, rtol=STATS_RTOL, atol=STATS_ATOL):
            bad.append(key)
    slack = 0.0 if exact_q else 2.0 / EXACT_ROWS
    for key, q in QUANTILES.items():
        v = np.asarray(got.get(key, np.nan), np.float64)
        lo, hi = np.quantile(x, max(0.0, q - slack), axis=0), np.quantile(x, min(1.0, q + slack), axis=0)
        tol = STATS_ATOL + STATS_RTOL * np.abs(hi)
        if v.shape != lo.shape or not np.all((v >= lo - tol) & (v <= hi + tol)):
            bad.append(key)
    return [f"{', '.join(bad)} disagree with the data"] if bad else []


def _check_stats(root: Path, shards: list[Shard], tables: dict[Path, pa.Table]) -> list[str]:
    p = root / STATS_PATH
    try:
        stats = read_json(p)
    except SgvlaError as e:
        return [str(e)]
    if stats is None:
        return [f"{p}: missing; re-run `sgvla gen` on the folder (it merges the shard statistics)"]
    if len(tables) != len(shards):
        return []  # unreadable shards are reported already; a recomputation would be partial
    used = [s for s in shards if s.split == "train"] or shards
    data = _recompute([tables[s.path] for s in used])
    problems = []
    exact = stats.get("quantiles") == "exact"
    for name in STATS_FIELDS:
        if not isinstance(stats.get(name), dict):
            problems.append(f"{p}: no statistics for {name!r}")
            continue
        problems += [f"{p}: {name}: {m}" for m in _compare_field(name, stats[name], data[name], exact)]
    n = sum(tables[s.path].num_rows for s in used)
    if stats.get("num_transitions") != n:
        problems.append(f"{p}: num_transitions {stats.get('num_transitions')} != {n} rows in the data")
    return problems


def _check_card(root: Path, shards: list[Shard], num_rows: dict[Path, int]) -> list[str]:
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    p = root / CARD_PATH
    if not p.exists():
        return [f"{p}: missing dataset card; re-run `sgvla gen` on the folder (it writes the card)"]
    try:
        data = DatasetCard.load(p).data
        configs = MetadataConfigs.from_dataset_card_data(data)
        infos = DatasetInfosDict.from_dataset_card_data(data)
    except Exception as e:  # noqa: BLE001 - any parse failure is the finding
        return [f"{p}: YAML header does not parse ({type(e).__name__}: {e})"]
    problems = []
    for config, splits in group_shards(shards).items():
        if config not in configs or config not in infos:
            problems.append(f"{p}: config {config!r} is not in the card's YAML")
            continue
        if infos[config].features != FEATURES:
            problems.append(f"{p}: features of {config!r} differ from the schema")
        card_splits = infos[config].splits or {}
        for split, group in splits.items():
            if any(s.path not in num_rows for s in group):
                continue  # an unreadable shard is reported already; its rows are unknown
            rows = sum(num_rows[s.path] for s in group)
            have = card_splits[split].num_examples if split in card_splits else None
            if have != rows:
                problems.append(f"{p}: {config}/{split} num_examples {have} != {rows} rows on disk "
                                "(stale card: re-run `sgvla gen` on the folder)")
    return problems


__all__ = ["validate_dataset", "check_shard_images"]
