"""`sgvla export --format lerobot`: a dataset folder as a LeRobot dataset (v3.0, or v2.1 for openpi).

LeRobot cannot be installed next to sgvla, so the export is written against LeRobot's published
file layout (read from `lerobot/datasets/utils.py`, `dataset_metadata.py`, `compute_stats.py` and
the v2.1 -> v3.0 conversion script) and checked by reading the files back in the tests.

Layout, v3.0 (many episodes per data file, Parquet metadata)::

    meta/info.json        codebase_version, robot_type, totals, chunks_size, file size limits, fps,
                          splits, data_path / video_path templates, features {dtype, shape, names}
    meta/stats.json       {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
    meta/tasks.parquet    task_index, indexed by the task string (pandas index "task")
    meta/episodes/chunk-000/file-000.parquet
                          episode_index, tasks, length, data/chunk_index, data/file_index,
                          dataset_from_index, dataset_to_index, stats/<feature>/<stat>,
                          meta/episodes/chunk_index, meta/episodes/file_index
    data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet   (one row group per episode)

v2.1 (one data file per episode, JSON-lines metadata)::

    meta/info.json (+ total_chunks, total_videos), meta/tasks.jsonl, meta/episodes.jsonl,
    meta/episodes_stats.jsonl, data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet

Both also get `meta/stats.json` and openpi's `norm_stats.json` (see `export_openpi`).

Features (sgvla field -> LeRobot feature):

* `<cam>_rgb` -> `observation.images.<cam>`: image, (H, W, 3).
* `<cam>_depth` -> `observation.images.<cam>_depth`: image (H, W, 1) with
  `info = {"is_depth_map": true, "depth_unit": "mm"}`, LeRobot's depth marking. The pixels stay
  uint16 millimetres in the 16-bit PNG `sgvla gen` wrote: LeRobot treats integer depth as
  millimetres (`infer_depth_unit`) and its reader turns a 16-bit image ("I;16") into float32
  millimetres; its recorder stores raw TIFF, which decodes to the same array, so the PNG is passed
  through unchanged (lossless, smaller, and no re-encoding). Depth statistics are in millimetres,
  not divided by 255, as LeRobot does for `is_depth_map` features.
* `<cam>_mask` -> `mask.<cam>`: image (H, W, 1), the 1-bit PNG (decodes to 0/1). Not under
  `observation.`: the masks are simulator labels, not something a robot observes. LeRobot still
  treats every image feature as a camera, so leave them out of a policy's input features.
* `observation.state` = qpos (12) + base_pose (7), `action` (13), with per-dimension names.
* `next.reward`, `next.success` (LeRobot's names for what follows the step, which is what
  `reward` and `success` are), `next.done` (the episode's last frame).
* auxiliary labels kept as extras outside `observation.` (so LeRobot's policy-feature mapping does
  not take them as state inputs): `obj_pose`, `obj_pose_world` (7 each), `is_grasped` (1),
  `subtask` (string).
* the task string is the episode's `instruction`; `task_index` points into the tasks table.
* bookkeeping: `timestamp`, `frame_index`, `episode_index`, `index`, `task_index`. Episodes are
  renumbered 0..N-1 in (config, shard, episode) order and `index` runs over the whole export.

Statistics follow `compute_stats.py`'s schema: per feature min, max, mean, std (population),
count and q01/q10/q50/q90/q99; vectors per dimension, scalars as shape (1,), images per channel
as (C, 1, 1) with RGB in [0, 1] and `count` the number of frames sampled. Images are sampled per
episode as LeRobot does (every frame up to 100 frames, then ~length**0.75 evenly spaced). Values
are exact (numpy's, linear quantiles): vectors over every frame, images over every pixel of the
sampled frames (pixel histograms, which also make the dataset-wide quantiles exact, where
LeRobot's aggregation only bounds them). Like LeRobot's, they describe every row of a column:
`obj_pose` includes its all-zero "no pose" rows, which sgvla's own `meta/stats.json` leaves out.
In v2.1 `episodes_stats.jsonl` omits the depth features: LeRobot 2.1 (the version openpi pins)
refuses to load a dataset whose statistics for a key containing "image" are not (3, 1, 1), and
depth has one channel.

Images are stored in LeRobot's image mode (PNG bytes in the Parquet, HF `Image` cells); video
encoding is not implemented. The Parquet schema carries `datasets`' feature metadata in its
older spelling (`Sequence`), which `datasets` 3.x (openpi's) and later both read.

The export is written to a temporary folder beside `--out` and renamed into place at the end, so
an interrupted export leaves `--out` as it was.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sgvla.dataset.export_openpi import write_norm_stats
from sgvla.dataset.layout import Shard, group_shards, open_shard, require_dataset, shard_rows
from sgvla.dataset.schema import FEATURES, FPS, decode_png
from sgvla.errors import Interrupted, SgvlaError
from sgvla.vocab import ACTION_NAMES, CAMERAS, POSE_NAMES, QPOS_NAMES

VERSIONS = ("3.0", "2.1")
ROBOT_TYPE = "fetch"
CHUNKS_SIZE = 1000
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
QUANTILES: dict[str, float] = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"

STATE_NAMES = QPOS_NAMES + tuple(f"base_{n}" for n in POSE_NAMES)
#: LeRobot's per-frame bookkeeping columns (`DEFAULT_FEATURES`), appended after the others.
DEFAULT_FEATURES: dict[str, dict] = {
    name: {"dtype": dtype, "shape": [1], "names": None}
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                        ("index", "int64"), ("task_index", "int64"))
}
#: Image feature -> (sgvla field, kind); kind picks the pixel levels and scale of its statistics.
IMAGE_SOURCES: dict[str, tuple[str, str]] = {
    **{f"observation.images.{c}": (f"{c}_rgb", "rgb") for c in CAMERAS},
    **{f"observation.images.{c}_depth": (f"{c}_depth", "depth") for c in CAMERAS},
    **{f"mask.{c}": (f"{c}_mask", "mask") for c in CAMERAS},
}
#: kind -> (number of integer pixel levels, factor from a level to the statistics' unit).
_LEVELS: dict[str, tuple[int, float]] = {"rgb": (256, 1 / 255), "depth": (65536, 1.0), "mask": (2, 1.0)}
_SOURCE_COLUMNS = sorted({src for src, _ in IMAGE_SOURCES.values()} | {
    "episode_index", "frame_index", "instruction", "subtask", "qpos", "base_pose", "action", "obj_pose",
    "obj_pose_world", "is_grasped", "reward", "success"})
_ARROW = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_(), "string": pa.string()}
_IMAGE_ARROW = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


# ---------------------------------------------------------------- features


def _image(shape: tuple[int, ...], depth: bool) -> dict:
    info = {"is_depth_map": True, "depth_unit": "mm"} if depth else {"is_depth_map": False}
    return {"dtype": "image", "shape": list(shape), "names": ["height", "width", "channels"], "info": info}


def _vector(names: tuple[str, ...]) -> dict:
    return {"dtype": "float32", "shape": [len(names)], "names": list(names)}


def _scalar(dtype: str) -> dict:
    return {"dtype": dtype, "shape": [1], "names": None}


def lerobot_features(image_shapes: dict[str, tuple[int, int, int]]) -> dict[str, dict]:
    """`info.json["features"]`, given the (H, W, C) of each image feature (read from the data)."""
    images = {k: _image(image_shapes[k], kind == "depth") for k, (_, kind) in IMAGE_SOURCES.items()
              if kind != "mask"}
    masks = {k: _image(image_shapes[k], False) for k, (_, kind) in IMAGE_SOURCES.items() if kind == "mask"}
    return {
        **images,
        "observation.state": _vector(STATE_NAMES),
        "action": _vector(ACTION_NAMES),
        "next.reward": _scalar("float32"),
        "next.success": _scalar("bool"),
        "next.done": _scalar("bool"),
        "obj_pose": _vector(POSE_NAMES),
        "obj_pose_world": _vector(POSE_NAMES),
        "is_grasped": _scalar("bool"),
        **masks,
        "subtask": _scalar("string"),
        **DEFAULT_FEATURES,
    }


def _hf_feature(ft: dict) -> tuple[pa.DataType, dict]:
    """Arrow type and `datasets` feature dict of a LeRobot feature, as `get_hf_features_from_features`
    maps them: image -> Image, shape (1,) -> Value, (n,) -> fixed-length Sequence."""
    if ft["dtype"] == "image":
        return _IMAGE_ARROW, {"_type": "Image"}
    value = {"dtype": ft["dtype"], "_type": "Value"}
    if ft["shape"] == [1]:
        return _ARROW[ft["dtype"]], value
    n = ft["shape"][0]
    return pa.list_(_ARROW[ft["dtype"]], n), {"feature": value, "length": n, "_type": "Sequence"}


def arrow_schema(features: dict[str, dict]) -> pa.Schema:
    """Schema of the data files, with the `huggingface` metadata `datasets` reads the types from."""
    fields, hf = [], {}
    for name, ft in features.items():
        typ, hf[name] = _hf_feature(ft)
        fields.append(pa.field(name, typ))
    meta = {"huggingface": json.dumps({"info": {"features": hf}})}
    return pa.schema(fields, metadata=meta)


# ---------------------------------------------------------------- statistics


def vector_stats(values: np.ndarray) -> dict[str, list]:
    """LeRobot statistics of a per-frame feature: [N] (stats shaped (1,)) or [N, D] (shaped (D,))."""
    x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [len(x)], **{k: q.tolist() for k, q in zip(QUANTILES, qs, strict=True)}}


def histogram_stats(hist: np.ndarray, frames: int, scale: float) -> dict[str, list]:
    """Per-channel statistics shaped (C, 1, 1) from pixel counts `hist[c, level]`.

    Exactly numpy's on the pixels (levels times `scale`), quantiles with linear interpolation,
    without holding the pixels: that is what keeps dataset-wide image quantiles exact. Only the
    levels present are summed (a depth channel has 65,536 levels, a few thousand of them used).
    """
    out: dict[str, list] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILES)}
    for h in hist:
        levels = np.flatnonzero(h)
        counts, values = h[levels].astype(np.float64), levels * scale
        n = counts.sum()
        mean = float((counts * values).sum() / n)
        cum = np.cumsum(counts)
        out["min"].append(values[0])
        out["max"].append(values[-1])
        out["mean"].append(mean)
        out["std"].append(math.sqrt((counts * (values - mean) ** 2).sum() / n))
        for key, q in QUANTILES.items():
            pos = q * (n - 1)
            lo = math.floor(pos)
            # the k-th smallest pixel (0-based) is the first level whose cumulative count exceeds k
            a, b = values[np.searchsorted(cum, [lo, min(lo + 1, n - 1)], side="right")]
            out[key].append(a + (pos - lo) * (b - a))
    shaped = {k: np.asarray(v, dtype=np.float64).reshape(-1, 1, 1).tolist() for k, v in out.items()}
    return {**{k: shaped[k] for k in ("min", "max", "mean", "std")}, "count": [int(frames)],
            **{k: shaped[k] for k in QUANTILES}}


def stats_frames(length: int) -> np.ndarray:
    """Frames of an episode whose images enter the statistics, picked as LeRobot picks them: all of
    them up to 100, else ~length**0.75 evenly spaced (at least 100, at most 10,000)."""
    n = length if length < 100 else max(100, min(int(length**0.75), 10_000))
    return np.round(np.linspace(0, length - 1, n)).astype(np.int64)


def _with_channels(a: np.ndarray) -> np.ndarray:
    return a[..., None] if a.ndim == 2 else a


def pixel_histogram(frames: np.ndarray, levels: int) -> np.ndarray:
    """Counts [C, levels] of the integer pixels of frames [F, H, W, C].

    One bincount per channel (it casts uint8 / uint16 itself: ~4x faster than offsetting every
    channel into one int64 bincount); binary masks only need their count of ones.
    """
    per_channel = frames.reshape(-1, frames.shape[-1])
    if levels == 2:
        ones = np.count_nonzero(per_channel, axis=0)
        return np.stack([len(per_channel) - ones, ones], axis=1)
    return np.stack([np.bincount(per_channel[:, c], minlength=levels) for c in range(per_channel.shape[1])])


def _pil_histogram(data: bytes, kind: str) -> np.ndarray:
    """Counts [C, levels] of one RGB or 1-bit PNG from PIL's own per-band histogram (exact for 8-bit
    bands, and it skips the copy into numpy); a 1-bit image counts its pixels at 0 and 255."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:
        bands = np.asarray(im.histogram(), dtype=np.int64).reshape(-1, 256)
    return bands if kind == "rgb" else bands[:, [0, 255]]


def _image_histograms(src: pa.Table, picks: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel counts of every image feature over the episode's sampled frames."""
    out = {}
    for name, (column, kind) in IMAGE_SOURCES.items():
        cells = pc.struct_field(src.column(column), "bytes").take(pa.array(picks)).to_pylist()
        if kind == "depth":  # PIL bins 16-bit images coarsely: count the millimetres in numpy
            out[name] = pixel_histogram(np.stack([_with_channels(decode_png(b)) for b in cells]), _LEVELS[kind][0])
        else:
            out[name] = np.sum([_pil_histogram(b, kind) for b in cells], axis=0)
    return out


def feature_stats(features: dict[str, dict], numeric: dict[str, np.ndarray],
                  hists: dict[str, np.ndarray], image_frames: int) -> dict[str, dict]:
    """Statistics of every non-string feature, in the features' order."""
    out = {}
    for name, ft in features.items():
        if ft["dtype"] == "image":
            out[name] = histogram_stats(hists[name], image_frames, _LEVELS[IMAGE_SOURCES[name][1]][1])
        elif ft["dtype"] != "string":
            out[name] = vector_stats(numeric[name])
    return out


@dataclass
class _Totals:
    """Everything the dataset-wide statistics need: vectors of every frame, pixel counts."""

    numeric: dict[str, list[np.ndarray]] = field(default_factory=dict)
    hists: dict[str, np.ndarray] = field(default_factory=dict)
    image_frames: int = 0

    def add(self, numeric: dict[str, np.ndarray], hists: dict[str, np.ndarray], image_frames: int) -> None:
        for k, v in numeric.items():
            self.numeric.setdefault(k, []).append(v)
        for k, h in hists.items():
            self.hists[k] = self.hists[k] + h if k in self.hists else h
        self.image_frames += image_frames

    def columns(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.numeric.items()}

    def stats(self, features: dict[str, dict]) -> dict[str, dict]:
        return feature_stats(features, self.columns(), self.hists, self.image_frames)


# ---------------------------------------------------------------- source episodes


def select_shards(root: Path, config: str | None, split: str) -> list[Shard]:
    """The complete shards of `split` in `config` (every config when None), in order."""
    groups = group_shards(require_dataset(root))
    if config is not None and config not in groups:
        raise SgvlaError(f"--config {config!r} is not in {root}: choose one of {', '.join(sorted(groups))}")
    configs = [config] if config is not None else sorted(groups)
    chosen = []
    for c in configs:
        shards = groups[c].get(split, [])
        if shards and len(shards) != shards[0].count:
            raise SgvlaError(f"{root}: {c}/{split} has {len(shards)} of {shards[0].count} shards: finish it by "
                             "re-running the `sgvla gen` command that wrote it, then export")
        chosen += shards
    if not chosen:
        have = sorted({s for c in configs for s in groups[c]})
        raise SgvlaError(f"--split {split!r} has no data in {root}: choose one of {', '.join(have)}")
    return chosen


def _numpy(src: pa.Table, name: str) -> np.ndarray:
    """A column as numpy: [N] for scalars, [N, D] for fixed-length vectors."""
    col = src.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy().reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False)


def _episode_runs(episode_index: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, stop) of each run of equal episode_index."""
    cuts = np.flatnonzero(np.diff(episode_index)) + 1
    bounds = [0, *cuts.tolist(), len(episode_index)]
    return zip(bounds[:-1], bounds[1:], strict=True)


def source_episodes(shards: list[Shard]) -> Iterator[pa.Table]:
    """Each episode's rows, in shard order; a shard whose episodes are not whole and ordered is an
    error (the export would scramble them)."""
    for shard in shards:
        with open_shard(shard.path) as pf:
            table = pf.read(columns=_SOURCE_COLUMNS)
        episodes = _numpy(table, "episode_index")
        frames = _numpy(table, "frame_index")
        seen: set[int] = set()
        for start, stop in _episode_runs(episodes):
            if episodes[start] in seen or not np.array_equal(frames[start:stop], np.arange(stop - start)):
                raise SgvlaError(f"{shard.path}: episode {episodes[start]} is not one run of frames 0..T-1: "
                                 f"run `sgvla validate` on the dataset and regenerate what it reports")
            seen.add(int(episodes[start]))
            yield table.slice(start, stop - start)


def image_shapes(shard: Shard) -> dict[str, tuple[int, int, int]]:
    """(H, W, C) of every image feature, from the first row of `shard`."""
    with open_shard(shard.path) as pf:
        row = next(pf.iter_batches(batch_size=1, columns=[s for s, _ in IMAGE_SOURCES.values()]))
    return {name: _with_channels(decode_png(row.column(src)[0].as_py())).shape
            for name, (src, _) in IMAGE_SOURCES.items()}


# ---------------------------------------------------------------- one episode


def _task_ids(src: pa.Table, tasks: dict[str, int]) -> np.ndarray:
    """task_index of each frame (the instruction), adding unseen instructions to `tasks`."""
    return np.array([tasks.setdefault(t, len(tasks)) for t in src.column("instruction").to_pylist()], np.int64)


def episode_numeric(src: pa.Table, episode_index: int, first_index: int, task_ids: np.ndarray) -> dict:
    """Every numeric exported feature of one episode as numpy, keyed by LeRobot name."""
    n = src.num_rows
    frame = np.arange(n, dtype=np.int64)
    return {
        "observation.state": np.concatenate([_numpy(src, "qpos"), _numpy(src, "base_pose")], axis=1),
        "action": _numpy(src, "action"),
        "next.reward": _numpy(src, "reward"),
        "next.success": _numpy(src, "success"),
        "next.done": frame == n - 1,
        "obj_pose": _numpy(src, "obj_pose"),
        "obj_pose_world": _numpy(src, "obj_pose_world"),
        "is_grasped": _numpy(src, "is_grasped"),
        "timestamp": (frame / FPS).astype(np.float32),
        "frame_index": frame,
        "episode_index": np.full(n, episode_index, np.int64),
        "index": first_index + frame,
        "task_index": task_ids,
    }


def _arrow_column(values: np.ndarray, typ: pa.DataType) -> pa.Array:
    if pa.types.is_fixed_size_list(typ):
        flat = pa.array(np.ascontiguousarray(values, np.float32).ravel(), typ.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, typ.list_size)
    return pa.array(values, typ)


def episode_table(src: pa.Table, schema: pa.Schema, numeric: dict[str, np.ndarray]) -> pa.Table:
    """The exported rows of one episode; images are the source PNG cells, unchanged."""
    subtasks = np.asarray(FEATURES["subtask"].names)[_numpy(src, "subtask")]
    cols = []
    for f in schema:
        if f.name in IMAGE_SOURCES:
            cols.append(src.column(IMAGE_SOURCES[f.name][0]).combine_chunks())
        elif f.name == "subtask":
            cols.append(pa.array(subtasks.tolist(), pa.string()))
        else:
            cols.append(_arrow_column(numeric[f.name], f.type))
    return pa.Table.from_arrays(cols, schema=schema)


# ---------------------------------------------------------------- writers


@dataclass
class Episode:
    """What the metadata needs of one exported episode."""

    index: int
    length: int
    tasks: list[str]
    from_index: int
    stats: dict[str, dict]
    location: dict[str, int] = field(default_factory=dict)


def _write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy", use_dictionary=False)


class V30Data:
    """v3.0 data files: episodes appended to `file-NNN` until it would pass `file_mb`, one row group
    per episode, 1000 files per chunk folder."""

    def __init__(self, root: Path, schema: pa.Schema, file_mb: float):
        self.root, self.schema, self.limit = root, schema, file_mb * 1024**2
        self.chunk, self.file, self.size = 0, 0, 0
        self.writer: pq.ParquetWriter | None = None

    def _next_file(self) -> None:
        self.close()
        self.file += 1
        if self.file == CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0
        self.size = 0

    def add(self, table: pa.Table) -> dict[str, int]:
        if self.writer is not None and self.size + table.nbytes > self.limit:
            self._next_file()
        if self.writer is None:
            path = self.root / V30_DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, self.schema, compression="snappy", use_dictionary=False)
        self.writer.write_table(table)
        self.size += table.nbytes
        return {"data/chunk_index": self.chunk, "data/file_index": self.file}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class V21Data:
    """v2.1 data files: one Parquet file per episode, episode_index // 1000 as its chunk."""

    def __init__(self, root: Path, schema: pa.Schema, file_mb: float):
        self.root = root

    def add(self, table: pa.Table) -> dict[str, int]:
        ep = table.column("episode_index")[0].as_py()
        _write_parquet(self.root / V21_DATA_PATH.format(episode_chunk=ep // CHUNKS_SIZE, episode_index=ep), table)
        return {}

    def close(self) -> None:
        pass


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def info_json(version: str, features: dict, episodes: int, frames: int, tasks: int, split: str,
              data_file_mb: float) -> dict:
    """`meta/info.json` of either version (v2.1 has total_chunks/total_videos, no file size limits)."""
    head = {"codebase_version": f"v{version}", "robot_type": ROBOT_TYPE, "total_episodes": episodes,
            "total_frames": frames, "total_tasks": tasks}
    splits = {split: f"0:{episodes}"}
    if version == "2.1":
        return {**head, "total_videos": 0, "total_chunks": -(-episodes // CHUNKS_SIZE), "chunks_size": CHUNKS_SIZE,
                "fps": FPS, "splits": splits, "data_path": V21_DATA_PATH, "video_path": None, "features": features}
    return {**head, "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": data_file_mb,
            "video_files_size_in_mb": VIDEO_FILE_MB, "fps": FPS, "splits": splits, "data_path": V30_DATA_PATH,
            "video_path": None, "features": features}


def _write_tasks_parquet(root: Path, tasks: dict[str, int]) -> None:
    import pandas as pd  # LeRobot reads the table with pandas, index named "task"

    df = pd.DataFrame({"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task"))
    path = root / "meta/tasks.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path)


def _episodes_table(episodes: list[Episode]) -> pa.Table:
    rows = []
    for e in episodes:
        stats = {f"stats/{feat}/{k}": v for feat, st in e.stats.items() for k, v in st.items()}
        rows.append({"episode_index": e.index, "tasks": e.tasks, "length": e.length, **e.location,
                     "dataset_from_index": e.from_index, "dataset_to_index": e.from_index + e.length, **stats,
                     "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
    return pa.Table.from_pylist(rows)


def write_meta_v30(root: Path, info: dict, tasks: dict[str, int], episodes: list[Episode], stats: dict) -> None:
    _write_json(root / INFO_PATH, info)
    _write_json(root / STATS_PATH, stats)
    _write_tasks_parquet(root, tasks)
    _write_parquet(root / V30_EPISODES_PATH.format(chunk_index=0, file_index=0), _episodes_table(episodes))


def v21_stats(stats: dict[str, dict]) -> dict[str, dict]:
    """Episode statistics LeRobot 2.1 accepts: it requires (3, 1, 1) for every key containing
    "image", so single-channel images under such a name (depth) are left out."""
    return {k: v for k, v in stats.items() if "image" not in k or np.shape(v["mean"]) == (3, 1, 1)}


def write_meta_v21(root: Path, info: dict, tasks: dict[str, int], episodes: list[Episode], stats: dict) -> None:
    _write_json(root / INFO_PATH, info)
    _write_json(root / STATS_PATH, stats)
    _write_jsonl(root / "meta/tasks.jsonl", [{"task_index": i, "task": t} for t, i in tasks.items()])
    _write_jsonl(root / "meta/episodes.jsonl",
                 [{"episode_index": e.index, "tasks": e.tasks, "length": e.length} for e in episodes])
    _write_jsonl(root / "meta/episodes_stats.jsonl",
                 [{"episode_index": e.index, "stats": v21_stats(e.stats)} for e in episodes])


# ---------------------------------------------------------------- the export


@dataclass
class ExportSummary:
    """What an export wrote (the CLI prints it)."""

    out: Path
    version: str
    episodes: int
    frames: int
    tasks: int


def check_version(version: str) -> str:
    v = version.lower().removeprefix("v")
    if v not in VERSIONS:
        raise SgvlaError(f"--version {version!r} is not a LeRobot version sgvla writes: use 3.0 (current LeRobot) "
                         "or 2.1 (openpi)")
    return v


def check_out(out: Path, dataset: Path, overwrite: bool) -> Path:
    """`out`, unless it is a file, overlaps the dataset, or holds something without --overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SgvlaError(f"--out {out} is a file: give a folder path for the export")
    o, d = out.resolve(), Path(dataset).resolve()
    if o == d or d in o.parents or o in d.parents:
        raise SgvlaError(f"--out {out} overlaps the dataset folder {dataset}: export to a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SgvlaError(f"--out {out} is not empty: choose a new folder, or pass --overwrite to replace it")
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished export to `out`; an old `out` is moved aside first, then deleted."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}") if out.exists() else None
    if old is not None:
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)


def _write_export(shards: list[Shard], root: Path, version: str, split: str, data_file_mb: float,
                  progress: bool) -> ExportSummary:
    from tqdm import tqdm

    features = lerobot_features(image_shapes(shards[0]))
    schema = arrow_schema(features)
    data = (V30Data if version == "3.0" else V21Data)(root, schema, data_file_mb)
    tasks: dict[str, int] = {}
    totals, episodes, frames = _Totals(), [], 0
    with tqdm(total=sum(shard_rows(s.path) for s in shards), unit="frame", desc=f"export LeRobot v{version}",
              disable=not progress, dynamic_ncols=True) as bar:
        for index, src in enumerate(source_episodes(shards)):
            task_ids = _task_ids(src, tasks)
            numeric = episode_numeric(src, index, frames, task_ids)
            picks = stats_frames(src.num_rows)
            hists = _image_histograms(src, picks)
            location = data.add(episode_table(src, schema, numeric))
            ep_tasks = list(dict.fromkeys(src.column("instruction").to_pylist()))
            stats = feature_stats(features, numeric, hists, len(picks))
            episodes.append(Episode(index, src.num_rows, ep_tasks, frames, stats, location))
            totals.add(numeric, hists, len(picks))
            frames += src.num_rows
            bar.update(src.num_rows)
    data.close()
    info = info_json(version, features, len(episodes), frames, len(tasks), split, data_file_mb)
    (write_meta_v30 if version == "3.0" else write_meta_v21)(root, info, tasks, episodes, totals.stats(features))
    write_norm_stats(root, totals.columns())
    return ExportSummary(root, version, len(episodes), frames, len(tasks))


def export_lerobot(dataset: Path, out: Path, version: str = "3.0", config: str | None = None, split: str = "train",
                   overwrite: bool = False, *, data_file_mb: float = DATA_FILE_MB,
                   progress: bool = True) -> ExportSummary:
    """Export `split` of `dataset` (one config, or every config) as a LeRobot dataset at `out`.

    The folder is built beside `out` under a temporary name and renamed into place when complete;
    `data_file_mb` is v3.0's data file size limit (LeRobot's default, 100 MB).
    """
    version = check_version(version)
    dataset = Path(dataset)
    shards = select_shards(dataset, config, split)
    out = check_out(out, dataset, overwrite)
    target = out.resolve()  # `--out .` has no name to put a temporary folder beside
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        summary = _write_export(shards, tmp, version, split, data_file_mb, progress)
        _move_into_place(tmp, target)
    except KeyboardInterrupt:
        raise Interrupted(f"export stopped; {out} was left as it was: re-run the same command") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.out = out
    return summary
