"""Training data pipeline: the HF dataset -> model-ready torch samples.

One sample is the observation at step t of an episode plus its targets:

* ``pixel_values``: {view: raw frames} for each of the views given (any of "head_rgb",
  "hand_rgb", "head_depth", "hand_depth"): uint8 [T, H, W, 3] for RGB, uint16 [T, H, W]
  millimetres for depth, at the stored resolution (128 px), T = history + 1 frames oldest first
  (t-history, ..., t); history frames before the episode start repeat its first frame. These are
  the decoded PNGs as stored (`sgvla.transforms.raw_frames`, which the processor runs on
  evaluation observations too): the model turns them into unit images (RGB / 255, Eq. 1 depth),
  resizes and normalises them on its own device (`transforms.raw_to_towers`), so DataLoader
  workers ship the fewest bytes a frame has (depth one 16-bit plane, never through 8-bit PIL).
* ``instruction``, ``subtask``, ``task``: strings.
* ``action``: float32[13], q01/q99-normalised to [-1, 1] with meta/stats.json;
  ``action_chunk``: float32[H, 13] = actions t..t+H-1, normalised, past the episode end repeating
  the last action; ``action_chunk_pad``: bool[H], True where padded.
* ``aux``: {"global_pos": float32[2] base x, y (m, world), "grasp": float32 0/1,
  "obj_pose": float32[7], "qpos": float32[12], "head_mask"/"hand_mask": bool[128, 128]} (masks
  raw as stored, like the pixels: a quarter of float32's bytes out of DataLoader workers; the
  model's loss takes them as floats).
* ``aux_valid``: the same keys -> bool. Rules (`aux_validity`): a target is invalid when any of
  its values is NaN/inf (then it is zeroed); ``obj_pose`` is also invalid when it is all zeros
  (the generator's "no pose"); every target is invalid on the subtasks the paper does not train it
  on (`sgvla.tasks.AUX_LABEL_SUBTASKS`: pose and masks on pick and place only); masks are also
  invalid when ``masks=False`` (not decoded), while an empty mask is a correct label (target out
  of view). global_pos, grasp and qpos are valid whenever finite.

The pipeline has no randomness, so a sample depends only on its index; shuffling belongs to the
sampler (`make_dataloader`: a seeded, resumable permutation split across ranks), which makes it
deterministic given a seed with any number of DataLoader workers. Only the image columns the
views need are decoded (plus the two masks when ``masks=True``); vectors are read once into numpy
and turned into every row's targets at construction (per episode when streaming), so a sample
only decodes its images and indexes its rows; `SgvlaTorchDataset.preload` decodes a selection's
images once, into memory, and then a sample only indexes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from sgvla.batching import collate
from sgvla.dataset.layout import find_shards, group_shards
from sgvla.dataset.sampler import ResumableDistributedSampler, epoch_seed
from sgvla.dataset.schema import (
    IMAGE_SIZE,
    MASK_FIELDS,
    STATS_PATH,
    VECTOR_FIELDS,
    decode_png,
    pose_present,
)
from sgvla.dataset.stats import load_stats, require_action_stats
from sgvla.errors import SgvlaError
from sgvla.transforms import normalize_action, raw_frames
from sgvla.vocab import AUX_LABEL_SUBTASKS, AUX_TARGETS, VIEWS

MASK_SIZE = IMAGE_SIZE
#: The vectors a sample is built from (action targets and aux targets); the world pose is not one.
_VECTORS = tuple(f for f in VECTOR_FIELDS if f != "obj_pose_world")
_TABULAR = ("episode_index", "frame_index", "is_grasped", "task", "subtask", "instruction", *_VECTORS)


@dataclass(frozen=True)
class PipelineSpec:
    """What the model consumes: views, history length, chunk length, masks (the model resizes)."""

    views: tuple[str, ...] = VIEWS
    history: int = 0
    chunk_size: int = 8
    masks: bool = True

    def check(self) -> None:
        bad = [v for v in self.views if v not in VIEWS]
        if bad or not self.views or len(set(self.views)) != len(self.views):
            raise SgvlaError(f"views {list(self.views)} invalid: give distinct names from "
                             f"{', '.join(VIEWS)}")
        if self.history < 0 or self.chunk_size < 1:
            raise SgvlaError(f"history={self.history}, chunk_size={self.chunk_size}: "
                             "need history >= 0, chunk_size >= 1")

    def image_fields(self) -> tuple[str, ...]:
        return tuple(self.views) + (MASK_FIELDS if self.masks else ())


# ---------------------------------------------------------------- decoding and sample assembly


def aux_validity(subtasks: np.ndarray, values: dict[str, np.ndarray], masks: bool) -> dict[str, np.ndarray]:
    """Per-row validity of every aux target (rules in the module doc), whole columns at once.

    `values`: the vector targets (N, ...); the masks are decoded PNGs, finite by construction.
    """
    n = len(subtasks)
    valid = {k: np.isfinite(v).reshape(n, -1).all(axis=1) for k, v in values.items()}
    valid["obj_pose"] &= pose_present(values["obj_pose"])
    valid.update({k: np.full(n, masks) for k in MASK_FIELDS})
    return {k: v & np.isin(subtasks, AUX_LABEL_SUBTASKS["mask" if k.endswith("_mask") else k])
            for k, v in valid.items()}


class SampleBuilder:
    """Turns rows of one table into model-ready samples: the vector part of every row (normalised
    actions, aux targets, validity) once per table (`targets`), the images per sample (`build`)."""

    def __init__(self, spec: PipelineSpec, q01: Sequence[float], q99: Sequence[float]):
        self.spec = spec
        self.q01 = np.asarray(q01, np.float32)
        self.q99 = np.asarray(q99, np.float32)

    def rows_for(self, t: int, start: int, end: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(history rows oldest first, chunk rows, chunk pad mask) for row t of episode [start, end)."""
        hist = [max(start, t - j) for j in range(self.spec.history, -1, -1)]
        want = np.arange(t, t + self.spec.chunk_size)
        return hist, np.minimum(want, end - 1), want >= end

    def targets(self, vec: dict[str, np.ndarray], subtasks: np.ndarray) -> dict[str, np.ndarray]:
        """A table's per-row targets, vectorised once so that a sample only indexes them: "action"
        normalised float32 (N, 13), the vector aux targets float32 (zeroed where invalid) and
        "valid" bool (N, len(AUX_TARGETS)), columns in AUX_TARGETS order."""
        aux = {"global_pos": vec["base_pose"][:, :2], "grasp": vec["is_grasped"], "obj_pose": vec["obj_pose"],
               "qpos": vec["qpos"]}
        aux = {k: np.asarray(v, np.float32) for k, v in aux.items()}
        valid = aux_validity(np.asarray(subtasks), aux, self.spec.masks)
        out = {k: np.where(valid[k].reshape(-1, *[1] * (v.ndim - 1)), v, np.float32(0)) for k, v in aux.items()}
        out["action"] = normalize_action(np.asarray(vec["action"], np.float32), self.q01, self.q99)
        out["valid"] = np.stack([valid[k] for k in AUX_TARGETS], axis=1)
        return out

    def build(self, targets: dict[str, np.ndarray], text: dict[str, str], t: int, start: int, end: int,
              fetch: Callable[[Sequence[str], list[int]], dict[str, list[np.ndarray]]]) -> dict:
        """Sample of row t (episode rows [start, end)) from the table's `targets` and its images:
        `fetch(fields, rows)` gives each field's decoded arrays for those rows, arrays the sample may
        keep (fresh, not shared with a store)."""
        spec = self.spec
        hist, chunk, pad = self.rows_for(t, start, end)
        need = sorted(set(hist))  # history slots clamped at the episode start repeat a row; t is the last
        images = fetch(spec.image_fields(), need)
        pos = {r: i for i, r in enumerate(need)}
        decoded = {r: {v: images[v][pos[r]] for v in spec.views} for r in need}
        valid = dict(zip(AUX_TARGETS, torch.from_numpy(targets["valid"][t].copy()), strict=True))
        aux = {k: torch.from_numpy(np.array(targets[k][t])) for k in AUX_TARGETS if k not in MASK_FIELDS}
        for m in MASK_FIELDS:
            mask = images[m][pos[t]] if spec.masks else np.zeros((MASK_SIZE, MASK_SIZE), bool)
            aux[m] = torch.from_numpy(mask if valid[m] else np.zeros_like(mask))
        actions = targets["action"][chunk]
        return {
            "pixel_values": raw_frames([decoded[r] for r in hist], spec.views, copy=False),
            "instruction": text["instruction"], "subtask": text["subtask"], "task": text["task"],
            "action": torch.from_numpy(actions[0].copy()),
            "action_chunk": torch.from_numpy(actions),
            "action_chunk_pad": torch.from_numpy(pad),
            "aux": aux,
            "aux_valid": valid,
        }


# ---------------------------------------------------------------- sources


def _is_local(source: str | Path) -> bool:
    return Path(source).is_dir()


def resolve_configs(source: str | Path, configs: str | Sequence[str] | None) -> list[str]:
    """Configs to read: the given ones, or every config of the dataset."""
    if isinstance(configs, str):
        return [configs]
    if configs:
        return list(configs)
    if _is_local(source):
        found = list(group_shards(find_shards(Path(source))))
    else:
        from datasets import get_dataset_config_names

        found = get_dataset_config_names(str(source))
    if not found:
        raise SgvlaError(f"{source} has no dataset configs: pass a folder written by `sgvla gen` or a Hub id")
    return found


def load_stats_for(source: str | Path, stats: dict | str | Path | None, revision: str | None = None) -> dict:
    """Normalisation statistics: a dict, a JSON file, or the dataset's own meta/stats.json."""
    if isinstance(stats, dict):
        return stats
    if stats is not None:
        path = Path(stats)
    elif _is_local(source):
        path = Path(source) / STATS_PATH
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(str(source), STATS_PATH, repo_type="dataset", revision=revision))
        except Exception as e:  # noqa: BLE001 - offline, missing repo, missing file: one message
            raise SgvlaError(f"cannot fetch {STATS_PATH} of Hub dataset {source} ({type(e).__name__}): "
                             "check the repo id and network, or pass stats=<path to stats.json>") from e
    return require_action_stats(load_stats(path), path)


def _load_hf(source: str | Path, config: str, split: str, revision: str | None, cache_dir: str | None):
    from datasets import load_dataset

    try:
        return load_dataset(str(source), config, split=split, revision=revision, cache_dir=cache_dir)
    except ValueError as e:
        raise SgvlaError(f"dataset {source} has no config {config!r} / split {split!r} ({e})") from e


def _require_fields(features, spec: PipelineSpec, where: str) -> None:
    need = list(spec.image_fields()) + list(_TABULAR)
    missing = [f for f in need if f not in features]
    if missing:
        raise SgvlaError(f"{where} has no field(s) {missing}, needed by views={list(spec.views)} "
                         f"masks={spec.masks}: change the views / masks setting or regenerate the dataset")


def _episode_bounds(episode: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row the [start, end) rows of its episode (rows sorted by episode, frame)."""
    n = len(episode)
    first = np.ones(n, bool)
    first[1:] = (episode[1:] != episode[:-1]) | (frame[1:] == 0)
    idx = np.arange(n)
    start = np.maximum.accumulate(np.where(first, idx, 0))
    nxt = np.where(first, idx, n)
    end = np.minimum.accumulate(np.append(nxt[1:], n)[::-1])[::-1]
    return start, end


# ---------------------------------------------------------------- map-style dataset


class SgvlaTorchDataset(Dataset):
    """Map-style dataset over one split of one or more configs (see the module doc for samples).

    `source` is a dataset folder or a Hub repo id; `stats` a dict / stats.json path (default:
    the dataset's meta/stats.json). Samples have no randomness: the sampler shuffles (`make_dataloader`).
    """

    def __init__(self, source: str | Path, configs: str | Sequence[str] | None = None, split: str = "train",
                 views: Sequence[str] = VIEWS, history: int = 0,
                 chunk_size: int = 8, stats: dict | str | Path | None = None,
                 masks: bool = True, revision: str | None = None,
                 cache_dir: str | None = None):
        from datasets import Image, concatenate_datasets

        self.spec = PipelineSpec(tuple(views), history, chunk_size, masks)
        self.spec.check()
        self.stats = load_stats_for(source, stats, revision)
        parts = []
        for config in resolve_configs(source, configs):
            ds = _load_hf(source, config, split, revision, cache_dir)
            _require_fields(ds.features, self.spec, f"dataset {source} config {config!r}")
            parts.append(ds)
        ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        self._read_vectors(ds)
        images = ds.select_columns(list(self.spec.image_fields()))
        for f in self.spec.image_fields():
            images = images.cast_column(f, Image(decode=False))
        self._images = images
        self._store: dict[str, np.ndarray] = {}  # decoded images of preloaded rows (`preload`)
        self._slot = np.full(len(self), -1, np.int64)
        self.builder = SampleBuilder(self.spec, self.stats["action"]["q01"], self.stats["action"]["q99"])
        self._targets = self.builder.targets(self.vec, self._subtask)

    def _read_vectors(self, ds) -> None:
        tab = ds.select_columns(list(_TABULAR)).with_format("numpy")[:]
        self.vec = {k: np.asarray(tab[k]) for k in (*_VECTORS, "is_grasped", "episode_index", "frame_index")}
        self.vec = {k: (np.stack(v) if v.dtype == object else v) for k, v in self.vec.items()}
        feats = ds.features
        self._task = np.asarray(feats["task"].names)[tab["task"]]
        self._subtask = np.asarray(feats["subtask"].names)[tab["subtask"]]
        self._instruction = np.asarray(tab["instruction"]).astype(str)
        self.start, self.end = _episode_bounds(self.vec["episode_index"], self.vec["frame_index"])

    def __len__(self) -> int:
        return len(self.start)

    @property
    def subtasks(self) -> np.ndarray:
        """Subtask name of every row (str array), e.g. to select rows for a sampler without decoding."""
        return self._subtask

    def preload(self, rows: Sequence[int] | None = None, max_mb: float = 4096) -> bool:
        """Decode the images of `rows` (default: every row) once, into memory, when they fit in
        `max_mb` MiB; samples then index them instead of decoding PNGs. PNG decoding is most of
        what a sample costs (about 60% of the pipeline's time at 128 px), and a CPU-scale run
        decodes every frame once per epoch, tens of times. The arrays are allocated before any
        DataLoader worker forks, so workers share them. Returns whether the rows were loaded."""
        rows = np.arange(len(self)) if rows is None else np.unique(np.asarray(rows, np.int64))
        fields = self.spec.image_fields()
        if not len(rows) or max_mb <= 0:
            return False
        first = self._decode(fields, [int(rows[0])])
        row_bytes = sum(a[0].nbytes for a in first.values())
        if len(rows) * row_bytes > max_mb * 2**20:
            return False
        store = {f: np.empty((len(rows), *first[f][0].shape), first[f][0].dtype) for f in fields}
        starts = range(0, len(rows), 64)
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
            parts = pool.map(lambda at: self._decode(fields, rows[at:at + 64].tolist()), starts)
            for at, part in zip(starts, parts, strict=True):
                for f in fields:
                    store[f][at:at + len(part[f])] = part[f]
        self._slot = np.full(len(self), -1, np.int64)
        self._slot[rows] = np.arange(len(rows))
        self._store = store
        return True

    def _decode(self, fields: Sequence[str], rows: list[int]) -> dict[str, list[np.ndarray]]:
        cells = self._images[rows]
        return {f: [decode_png(c) for c in cells[f]] for f in fields}

    def _fetch(self, fields: Sequence[str], rows: list[int]) -> dict[str, list[np.ndarray]]:
        slots = self._slot[rows]  # all -1 until `preload`
        if (slots < 0).any():
            return self._decode(fields, rows)
        return {f: list(self._store[f][slots]) for f in fields}  # fancy indexing copies: samples own them

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        text = {"instruction": str(self._instruction[i]), "subtask": str(self._subtask[i]),
                "task": str(self._task[i])}
        return self.builder.build(self._targets, text, int(i), int(self.start[i]), int(self.end[i]), self._fetch)


def make_dataloader(dataset: Dataset, batch_size: int, num_workers: int = 2, shuffle: bool = True,
                    seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False,
                    epoch: int = 0, collate_fn: Callable | None = None, *, indices: Sequence[int] | None = None,
                    stage: int = 0, start: int = 0) -> DataLoader:
    """The DataLoader of `sgvla train` (and the one to use outside it): its order depends only on
    (seed, stage, epoch, rank, world_size), so it can start mid-epoch at this rank's sample `start`.

    Every rank gets every world_size-th index of one seeded permutation of `indices` (default: the
    whole dataset); the tail that does not divide by world_size is dropped so that every rank runs
    the same number of steps. Batches are stacked by `sgvla.batching.collate` (one shared buffer
    per batch) unless `collate_fn` is given: the model processor's `collate` also tokenizes, which
    gives batches that `model(**batch)` takes.
    """
    sampler = ResumableDistributedSampler(len(dataset) if indices is None else indices, world_size, rank,
                                          seed=seed, shuffle=shuffle)
    sampler.set_epoch(epoch, stage=stage, start=start)
    # worker processes draw their seeds from this generator: reproducible per (stage, epoch, rank)
    g = torch.Generator().manual_seed(epoch_seed(seed, stage, epoch) + rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, persistent_workers=False, collate_fn=collate_fn or collate,
                      generator=g, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if num_workers else None)


# ---------------------------------------------------------------- streaming variant


class SgvlaStreamingDataset(IterableDataset):
    """Iterable twin of `SgvlaTorchDataset` over `load_dataset(..., streaming=True)`.

    Shards hold whole episodes, so it reads one episode at a time (rows buffered, images left
    undecoded until a sample needs them) and yields its samples through a seeded shuffle buffer.
    Shard order is shuffled with (seed, epoch); DataLoader workers and ranks get disjoint shards
    (`datasets` splits by shard; for ranks use `split_dataset_by_node` through `rank`/`world_size`).
    Give its DataLoader `collate_fn=sgvla.batching.collate` (as `make_dataloader` does) for speed.
    """

    def __init__(self, source: str | Path, configs: str | Sequence[str] | None = None, split: str = "train",
                 views: Sequence[str] = VIEWS, history: int = 0,
                 chunk_size: int = 8, stats: dict | str | Path | None = None,
                 seed: int = 0, masks: bool = True, shuffle_buffer: int = 256, rank: int = 0,
                 world_size: int = 1, revision: str | None = None):
        self.spec = PipelineSpec(tuple(views), history, chunk_size, masks)
        self.spec.check()
        self.source, self.split, self.revision = source, split, revision
        self.configs = resolve_configs(source, configs)
        self.stats = load_stats_for(source, stats, revision)
        self.seed, self.epoch, self.shuffle_buffer = seed, 0, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.builder = SampleBuilder(self.spec, self.stats["action"]["q01"], self.stats["action"]["q99"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _stream(self):
        from datasets import Image, concatenate_datasets, load_dataset
        from datasets.distributed import split_dataset_by_node

        parts = []
        for config in self.configs:
            ds = load_dataset(str(self.source), config, split=self.split, streaming=True,
                              revision=self.revision)
            _require_fields(ds.features, self.spec, f"dataset {self.source} config {config!r}")
            ds = ds.select_columns(list(_TABULAR) + list(self.spec.image_fields()))
            for f in self.spec.image_fields():
                ds = ds.cast_column(f, Image(decode=False))
            parts.append(ds)
        ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        # shuffle the shard order only, reading one shard at a time, so that episodes stay whole
        ds = ds.shuffle(seed=self.seed + self.epoch, buffer_size=1, max_buffer_input_shards=1)
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size, strategy="shards")
        return ds

    def _episodes(self) -> Iterator[list[dict]]:
        rows: list[dict] = []
        for row in self._stream():
            if rows and (row["episode_index"] != rows[-1]["episode_index"] or row["frame_index"] == 0):
                yield rows
                rows = []
            rows.append(row)
        if rows:
            yield rows

    def _episode_samples(self, rows: list[dict]) -> Iterator[dict]:
        from sgvla.dataset.schema import FEATURES

        vec = {k: np.asarray([r[k] for r in rows], np.float32) for k in _VECTORS}
        vec["is_grasped"] = np.asarray([r["is_grasped"] for r in rows])
        r0 = rows[0]
        text = {"instruction": r0["instruction"], "subtask": FEATURES["subtask"].int2str(r0["subtask"]),
                "task": FEATURES["task"].int2str(r0["task"])}

        def fetch(fields, idx):
            return {f: [decode_png(rows[i][f]) for i in idx] for f in fields}

        targets = self.builder.targets(vec, np.full(len(rows), text["subtask"]))
        for t in range(len(rows)):
            text_t = {**text, "instruction": rows[t]["instruction"]}
            yield self.builder.build(targets, text_t, t, 0, len(rows), fetch)

    def __iter__(self) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, self.epoch])
        buf: list[dict] = []
        for rows in self._episodes():
            for s in self._episode_samples(rows):
                if len(buf) < self.shuffle_buffer:
                    buf.append(s)
                    continue
                j = int(rng.integers(len(buf)))
                yield buf[j]
                buf[j] = s
        rng.shuffle(buf)
        yield from buf


__all__ = ["SgvlaTorchDataset", "SgvlaStreamingDataset", "PipelineSpec", "make_dataloader",
           "aux_validity"]
