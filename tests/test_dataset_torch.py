"""The training data pipeline yields what the model expects, deterministically, with any workers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Features

from sgvla.dataset.schema import FEATURES, IMAGE_SIZE, STATS_PATH, decode_png
from sgvla.dataset.synthetic import write_synthetic_dataset
from sgvla.dataset.torch_dataset import (
    PipelineSpec,
    SampleBuilder,
    SgvlaStreamingDataset,
    SgvlaTorchDataset,
    make_dataloader,
)
from sgvla.errors import SgvlaError
from sgvla.transforms import normalize_action

S = IMAGE_SIZE  # samples carry raw frames at the stored resolution: the model converts and resizes them


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("ds")
    write_synthetic_dataset(r, "mini_kitchen", {"train": [5, 3, 4, 6], "val": [3]}, episodes_per_shard=2,
                            finalize=False)
    return write_synthetic_dataset(r, "set_table", {"train": [4, 2]}, episodes_per_shard=1, seed=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def rows(root):
    t = pq.read_table(sorted(root.glob("mini_kitchen/data/train-*.parquet"))).to_pydict()
    return t


def test_sample_format_shapes_dtypes_and_ranges(root, cache):
    ds = SgvlaTorchDataset(root, "mini_kitchen", views=("head_rgb", "hand_rgb", "head_depth"), history=2,
                           chunk_size=4, cache_dir=cache)
    assert len(ds) == 18
    s = ds[6]
    px = s["pixel_values"]
    assert list(px) == ["head_rgb", "hand_rgb", "head_depth"]
    assert px["head_rgb"].dtype == torch.uint8 and px["head_rgb"].shape == (3, S, S, 3)
    assert px["head_depth"].dtype == torch.uint16 and px["head_depth"].shape == (3, S, S)
    assert isinstance(s["instruction"], str) and s["subtask"] == "place" and s["task"] == "mini_kitchen"
    assert s["action"].dtype == torch.float32 and s["action"].shape == (13,)
    assert s["action_chunk"].shape == (4, 13) and s["action_chunk_pad"].dtype == torch.bool
    assert s["action"].abs().max() <= 1
    shapes = {"global_pos": (2,), "grasp": (), "obj_pose": (7,), "qpos": (12,), "head_mask": (128, 128),
              "hand_mask": (128, 128)}
    assert {k: tuple(v.shape) for k, v in s["aux"].items()} == shapes
    assert all(v.dtype == (torch.bool if k.endswith("_mask") else torch.float32) for k, v in s["aux"].items())
    assert set(s["aux_valid"]) == set(shapes) and all(v.dtype == torch.bool for v in s["aux_valid"].values())


def _same_sample(a: dict, b: dict) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_sample(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_preloaded_rows_give_the_samples_decoding_gives(root, cache):
    kw = dict(views=("head_rgb", "hand_depth"), history=2, chunk_size=4, cache_dir=cache)
    plain = SgvlaTorchDataset(root, "mini_kitchen", **kw)
    loaded = SgvlaTorchDataset(root, "mini_kitchen", **kw)
    assert loaded.preload(rows=range(5, 18)) and not loaded.preload(max_mb=1e-3)  # too big: left as it was
    for i in range(len(plain)):  # rows 0-4 were not preloaded: decoded as before
        assert _same_sample(plain[i], loaded[i]), i
    s = loaded[7]
    s["pixel_values"]["head_rgb"].zero_()
    s["aux"]["head_mask"].fill_(True)  # a sample owns its arrays: the store is not changed through it
    assert _same_sample(plain[7], loaded[7])


def test_history_is_frame_major_and_clamps_at_the_episode_start(root, cache):
    views = ("head_rgb", "hand_rgb")
    ds = SgvlaTorchDataset(root, "mini_kitchen", views=views, history=2, cache_dir=cache)
    cur = SgvlaTorchDataset(root, "mini_kitchen", views=views, history=0, cache_dir=cache)
    px = lambda d, i, v: d[i]["pixel_values"][v]  # noqa: E731
    for v in views:
        # episode 1 starts at row 5; row 6 sees frames (5, 5, 6), oldest first
        x = px(ds, 6, v)
        assert torch.equal(x[0:1], px(cur, 5, v)) and torch.equal(x[1:2], px(cur, 5, v))
        assert torch.equal(x[2:3], px(cur, 6, v))
        y = px(ds, 9, v)  # episode 2 spans rows 8..11: row 9 sees frames (8, 8, 9)
        assert torch.equal(y[0:2], px(cur, 8, v).expand(2, -1, -1, -1)) and torch.equal(y[2:3], px(cur, 9, v))
    assert not torch.equal(px(ds, 6, "head_rgb"), px(ds, 6, "hand_rgb"))  # each view its own camera


def test_actions_are_q01_q99_normalised_and_chunks_pad_at_the_episode_end(root, rows, cache):
    stats = json.loads((root / STATS_PATH).read_text())
    q01, q99 = stats["action"]["q01"], stats["action"]["q99"]
    ds = SgvlaTorchDataset(root, "mini_kitchen", views=("head_rgb",), chunk_size=8,
                           cache_dir=cache)
    raw = np.asarray(rows["action"], np.float32)
    s = ds[2]  # episode 0 has rows 0..4: chunk rows 2,3,4 then 4 repeated
    np.testing.assert_allclose(s["action"], normalize_action(raw[2], q01, q99), atol=1e-6)
    want = normalize_action(raw[[2, 3, 4, 4, 4, 4, 4, 4]], q01, q99)
    np.testing.assert_allclose(s["action_chunk"], want, atol=1e-6)
    assert s["action_chunk_pad"].tolist() == [False] * 3 + [True] * 5
    assert ds[0]["action_chunk_pad"].tolist() == [False] * 5 + [True] * 3


def test_depth_keeps_more_than_8_bits_and_follows_eq1(root, rows, cache):
    from sgvla.transforms import raw_to_unit

    ds = SgvlaTorchDataset(root, "mini_kitchen", views=("head_depth",), cache_dir=cache)
    raw = ds[0]["pixel_values"]
    depth_mm = decode_png(rows["head_depth"][0]).astype(np.float64)
    assert torch.equal(raw["head_depth"][0], torch.from_numpy(decode_png(rows["head_depth"][0])))  # as stored
    p = raw_to_unit({k: v[None] for k, v in raw.items()}, ["head_depth"])[0, 0]  # what the model computes
    assert torch.equal(p[0], p[1]) and torch.equal(p[0], p[2])  # replicated to 3 channels
    np.testing.assert_allclose(p[0].numpy(), 1 - np.tanh(depth_mm / 1000), atol=1e-6)  # float32 rounding
    assert len(torch.unique(p[0])) > 256
    # 1 mm apart stays apart: an 8-bit image could not separate these levels
    levels = np.unique(depth_mm)
    steps = np.flatnonzero(np.diff(levels) == 1)
    assert len(steps), "fixture depth has no two levels 1 mm apart"
    near, far = levels[steps[0]], levels[steps[0] + 1]
    a, b = np.argwhere(depth_mm == near)[0], np.argwhere(depth_mm == far)[0]
    assert p[0, a[0], a[1]] > p[0, b[0], b[1]]  # distinct, and nearer is brighter (Eq. 1)


def test_aux_validity_rules(root, cache):
    ds = SgvlaTorchDataset(root, "mini_kitchen", views=("head_rgb",), cache_dir=cache)
    by_sub: dict[str, list[bool]] = {}
    for i in range(len(ds)):
        s = ds[i]
        by_sub.setdefault(s["subtask"], []).append(bool(s["aux_valid"]["obj_pose"]))
        if not s["aux_valid"]["obj_pose"]:
            assert torch.count_nonzero(s["aux"]["obj_pose"]) == 0
        assert s["aux_valid"]["global_pos"] and s["aux_valid"]["qpos"]
        # the paper's allocation (sgvla.vocab.AUX_LABEL_SUBTASKS): masks and pose from pick/place only
        assert bool(s["aux_valid"]["head_mask"]) == (s["subtask"] in ("pick", "place"))
    assert all(by_sub["pick"]) and all(by_sub["place"])
    assert not any(by_sub["open"]) and not any(by_sub["close"])
    nomask = SgvlaTorchDataset(root, "mini_kitchen", views=("head_rgb",), masks=False,
                               cache_dir=cache)[0]
    assert not nomask["aux_valid"]["head_mask"] and torch.count_nonzero(nomask["aux"]["hand_mask"]) == 0


def test_a_nan_qpos_is_an_invalid_zeroed_target(rows):
    spec = PipelineSpec(views=("head_rgb",), chunk_size=2, masks=False)
    builder = SampleBuilder(spec, [-1.0] * 13, [1.0] * 13)
    n = 3
    vec = {"action": np.zeros((n, 13), np.float32), "qpos": np.ones((n, 12), np.float32),
           "base_pose": np.ones((n, 7), np.float32), "obj_pose": np.ones((n, 7), np.float32),
           "is_grasped": np.zeros(n, bool)}
    vec["qpos"][1, 4] = np.nan
    text = {"instruction": "pick up the bowl", "subtask": "pick", "task": "mini_kitchen"}

    def fetch(fields, idx):
        return {f: [decode_png(rows[f][i]) for i in idx] for f in fields}

    targets = builder.targets(vec, np.full(n, "pick"))
    bad = builder.build(targets, text, 1, 0, n, fetch)
    assert not bad["aux_valid"]["qpos"]
    assert bad["aux"]["qpos"].shape == (12,) and torch.count_nonzero(bad["aux"]["qpos"]) == 0
    assert bad["aux_valid"]["global_pos"] and bad["aux_valid"]["obj_pose"]  # only qpos is affected
    good = builder.build(targets, text, 0, 0, n, fetch)
    assert good["aux_valid"]["qpos"] and torch.equal(good["aux"]["qpos"], torch.ones(12))


def test_all_configs_by_default(root, cache):
    ds = SgvlaTorchDataset(root, views=("hand_rgb",), cache_dir=cache)
    assert len(ds) == 18 + 6
    assert ds[len(ds) - 1]["task"] == "set_table" and ds[0]["task"] == "mini_kitchen"
    assert ds[18]["action_chunk_pad"].tolist() == [False] * 4 + [True] * 4  # set_table episode 0, length 4


def _batches(loader):
    return [b["action"].clone() for b in loader]


def test_dataloader_is_deterministic_with_workers_and_ranks_are_disjoint(root, cache):
    ds = SgvlaTorchDataset(root, "mini_kitchen", views=("head_rgb", "head_depth"), history=1, cache_dir=cache)
    a = _batches(make_dataloader(ds, batch_size=4, num_workers=2, seed=7))
    b = _batches(make_dataloader(ds, batch_size=4, num_workers=0, seed=7))
    c = _batches(make_dataloader(ds, batch_size=4, num_workers=0, seed=8))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    batch = next(iter(make_dataloader(ds, batch_size=3, num_workers=0)))
    assert batch["pixel_values"]["head_rgb"].shape == (3, 2, S, S, 3) and len(batch["instruction"]) == 3
    assert batch["pixel_values"]["head_depth"].shape == (3, 2, S, S)
    assert batch["aux_valid"]["obj_pose"].shape == (3,)
    seen = []
    for rank in range(2):
        loader = make_dataloader(ds, batch_size=2, num_workers=0, seed=1, rank=rank, world_size=2)
        seen.append({tuple(r.tolist()) for bt in _batches(loader) for r in bt})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == len(ds)


def _flatten(batch, path=()):
    for k, v in batch.items():
        yield from _flatten(v, path + (k,)) if isinstance(v, dict) else [(path + (k,), v)]


def test_worker_batches_equal_default_collate_and_cross_as_one_buffer(root, cache):
    from torch.utils.data import default_collate

    from sgvla.batching import collate

    ds = SgvlaTorchDataset(root, "mini_kitchen", views=("head_rgb", "head_depth"), cache_dir=cache)
    got = dict(_flatten(next(iter(make_dataloader(ds, batch_size=4, num_workers=2, shuffle=False)))))
    want = dict(_flatten(default_collate([ds[i] for i in range(4)])))
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        else:
            assert got[k] == v, k
    tensors = [v for v in got.values() if isinstance(v, torch.Tensor)]
    assert len(tensors) > 10 and len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    with pytest.raises(SgvlaError, match="cannot batch aux.qpos"):
        collate([{"aux": {"qpos": torch.zeros(12)}}, {"aux": {"qpos": torch.zeros(11)}}])
    with pytest.raises(SgvlaError, match="lacks aux.grasp"):
        collate([{"aux": {"grasp": 1.0}}, {"aux": {}}])


def test_streaming_yields_the_same_samples(root, cache):
    kw = dict(views=("head_rgb", "hand_depth"), history=1, chunk_size=3)
    mapped = SgvlaTorchDataset(root, "mini_kitchen", cache_dir=cache, **kw)
    stream = list(SgvlaStreamingDataset(root, "mini_kitchen", seed=0, **kw))
    assert len(stream) == len(mapped)
    key = lambda s: tuple(s["action_chunk"].flatten().tolist())  # noqa: E731
    want = {key(mapped[i]): mapped[i] for i in range(len(mapped))}
    for s in stream:
        m = want[key(s)]
        assert all(torch.equal(s["pixel_values"][v], m["pixel_values"][v]) for v in kw["views"])
        assert torch.equal(s["action_chunk_pad"], m["action_chunk_pad"]) and s["subtask"] == m["subtask"]
        assert all(torch.equal(s["aux"][k], m["aux"][k]) for k in m["aux"])
    order = [key(s) for s in SgvlaStreamingDataset(root, "mini_kitchen", seed=0, **kw)]
    assert order == [key(s) for s in stream]  # same seed, same order
    # DataLoader workers share the shards out: every sample exactly once
    loader = torch.utils.data.DataLoader(SgvlaStreamingDataset(root, "mini_kitchen", **kw), batch_size=4,
                                         num_workers=2)
    got = [tuple(r.flatten().tolist()) for b in loader for r in b["action_chunk"]]
    assert sorted(got) == sorted(want)
    assert list(mapped.subtasks[:6]) == ["pick"] * 5 + ["place"]


def test_bad_views_and_missing_fields_are_clear_errors(root, tmp_path, cache):
    with pytest.raises(SgvlaError, match="views"):
        SgvlaTorchDataset(root, "mini_kitchen", views=("head_rgb", "left_rgb"), cache_dir=cache)
    with pytest.raises(SgvlaError, match="history"):
        SgvlaTorchDataset(root, "mini_kitchen", history=-1, cache_dir=cache)
    # an RGB-only export of the dataset: depth columns dropped, features without them
    rgb_only = tmp_path / "rgb_only"
    keep = Features({k: v for k, v in FEATURES.items() if "depth" not in k})
    for p in root.glob("mini_kitchen/data/train-*.parquet"):
        out = rgb_only / p.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        t = pq.read_table(p).select(list(keep))
        pq.write_table(t.cast(keep.arrow_schema), out)
    (rgb_only / "README.md").write_text("---\nconfigs:\n- config_name: mini_kitchen\n  data_files:\n"
                                        "  - split: train\n    path: mini_kitchen/data/train-*\n---\n")
    (rgb_only / "meta").mkdir()
    shutil.copy(root / STATS_PATH, rgb_only / STATS_PATH)
    ds = SgvlaTorchDataset(rgb_only, "mini_kitchen", views=("head_rgb",), cache_dir=cache)
    assert len(ds) == 18
    with pytest.raises(SgvlaError, match="head_depth"):
        SgvlaTorchDataset(rgb_only, "mini_kitchen", views=("head_rgb", "head_depth"), cache_dir=cache)
    (rgb_only / STATS_PATH).unlink()
    with pytest.raises(SgvlaError, match="stats.json is missing"):
        SgvlaTorchDataset(rgb_only, "mini_kitchen", views=("head_rgb",), cache_dir=cache)


def test_raw_frames_are_stored_values_and_unit_images_follow_their_float_definitions():
    """`raw_frames` (dataset and processor) keeps uint8 RGB and clips depth to uint16 as the dataset
    writer does, from the dataset's uint16, a simulator's int32 or float millimetres; `raw_to_unit`
    (the model) is RGB / 255 and Eq. 1 depth in float32."""
    from sgvla.dataset.schema import encode_depth
    from sgvla.transforms import depth_to_unit, raw_frames, raw_to_unit

    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mm = g.integers(-100, 70000, (16, 16))
    stored = torch.from_numpy(decode_png(encode_depth(mm)))
    views = ("head_rgb", "hand_depth")
    for depth in (mm, mm[..., None], mm.astype(np.float32)):
        raw = raw_frames([{"head_rgb": rgb, "hand_depth": depth}] * 2, views)
        assert torch.equal(raw["head_rgb"], torch.from_numpy(rgb).expand(2, -1, -1, -1))
        assert torch.equal(raw["hand_depth"], stored.expand(2, -1, -1))
    unit = raw_to_unit({k: v[None] for k, v in raw.items()}, views)
    assert unit.dtype == torch.float32 and unit.shape == (1, 4, 3, 16, 16)  # frame-major: rgb, depth, rgb, depth
    assert torch.equal(unit[0, 2], torch.from_numpy(rgb).movedim(-1, 0).float() / 255)
    assert torch.equal(unit[0, 3], depth_to_unit(stored).expand(3, -1, -1))
    frame = {"head_rgb": rgb, "hand_depth": mm}
    assert not np.shares_memory(raw_frames([frame], views)["head_rgb"].numpy(), rgb)  # the caller keeps its arrays
    assert np.shares_memory(raw_frames([frame], views, copy=False)["head_rgb"].numpy(), rgb)  # given away
    with pytest.raises(SgvlaError, match="one resolution"):
        raw_frames([{"head_rgb": rgb, "hand_depth": mm[:8]}], views)
    with pytest.raises(SgvlaError, match="uint8"):
        raw_frames([{"head_rgb": rgb.astype(np.float32), "hand_depth": mm}], views)
