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

S = IMAGE_SIZE  # samples carry unit images at the stored resolution: the model resizes them


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
    x = s["pixel_values"]["unit"]
    assert set(s["pixel_values"]) == {"unit"} and x.dtype == torch.float16 and x.shape == (9, 3, S, S)
    assert x.min() >= 0 and x.max() <= 1
    assert isinstance(s["instruction"], str) and s["subtask"] == "place" and s["task"] == "mini_kitchen"
    assert s["action"].dtype == torch.float32 and s["action"].shape == (13,)
    assert s["action_chunk"].shape == (4, 13) and s["action_chunk_pad"].dtype == torch.bool
    assert s["action"].abs().max() <= 1
    shapes = {"global_pos": (2,), "grasp": (), "obj_pose": (7,), "qpos": (12,), "head_mask": (128, 128),
              "hand_mask": (128, 128)}
    assert {k: tuple(v.shape) for k, v in s["aux"].items()} == shapes
    assert all(v.dtype == torch.float32 for v in s["aux"].values())
    assert set(s["aux_valid"]) == set(shapes) and all(v.dtype == torch.bool for v in s["aux_valid"].values())
    assert set(torch.unique(s["aux"]["head_mask"]).tolist()) <= {0.0, 1.0}


def test_history_is_frame_major_and_clamps_at_the_episode_start(root, cache):
    views = ("head_rgb", "hand_rgb")
    ds = SgvlaTorchDataset(root, "mini_kitchen", views=views, history=2, cache_dir=cache)
    cur = SgvlaTorchDataset(root, "mini_kitchen", views=views, history=0, cache_dir=cache)
    px = lambda d, i: d[i]["pixel_values"]["unit"]  # noqa: E731
    # episode 1 starts at row 5; row 6 sees frames (5, 5, 6); views per frame in the given order
    x = px(ds, 6)
    assert torch.equal(x[0:2], px(cur, 5)) and torch.equal(x[2:4], px(cur, 5))
    assert torch.equal(x[4:6], px(cur, 6))
    assert not torch.equal(x[0], x[1])  # head then hand, not the same view twice
    y = px(ds, 9)  # episode 2 spans rows 8..11: row 9 sees frames (8, 8, 9)
    assert torch.equal(y[0:2], px(cur, 8)) and torch.equal(y[4:6], px(cur, 9))


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
    ds = SgvlaTorchDataset(root, "mini_kitchen", views=("head_depth",), cache_dir=cache)
    p = ds[0]["pixel_values"]["unit"][0].float()
    assert torch.equal(p[0], p[1]) and torch.equal(p[0], p[2])  # replicated to 3 channels
    depth_mm = decode_png(rows["head_depth"][0]).astype(np.float64)
    np.testing.assert_allclose(p[0].numpy(), 1 - np.tanh(depth_mm / 1000), atol=2.5e-4)  # float16 rounding
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
        return {f: [rows[f][i] for i in idx] for f in fields}

    bad = builder.build(vec, text, 1, 0, n, fetch)
    assert not bad["aux_valid"]["qpos"]
    assert bad["aux"]["qpos"].shape == (12,) and torch.count_nonzero(bad["aux"]["qpos"]) == 0
    assert bad["aux_valid"]["global_pos"] and bad["aux_valid"]["obj_pose"]  # only qpos is affected
    good = builder.build(vec, text, 0, 0, n, fetch)
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
    assert batch["pixel_values"]["unit"].shape == (3, 4, 3, S, S) and len(batch["instruction"]) == 3
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
        assert torch.equal(s["pixel_values"]["unit"], m["pixel_values"]["unit"])
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


def test_unit_images_follow_their_float_definitions_for_every_input_dtype():
    """`frames_to_unit16` (dataset and processor): RGB / 255 and Eq. 1 depth up to float16 rounding,
    whether depth comes as the dataset's uint16, a simulator's int32 or float millimetres."""
    from sgvla.transforms import depth_to_unit, frames_to_unit16

    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mm = g.integers(0, 5000, (16, 16)).astype(np.uint16)
    want_rgb = torch.from_numpy(rgb).movedim(-1, 0).float() / 255
    want_depth = depth_to_unit(torch.from_numpy(mm.astype(np.int32))).expand(3, -1, -1)
    for depth in (mm, mm.astype(np.int32)[..., None], mm.astype(np.float32)):
        unit = frames_to_unit16([{"head_rgb": rgb, "hand_depth": depth}], ("head_rgb", "hand_depth"))
        assert unit.dtype == torch.float16 and unit.shape == (2, 3, 16, 16)
        torch.testing.assert_close(unit[0].float(), want_rgb, rtol=0, atol=2.5e-4)
        torch.testing.assert_close(unit[1].float(), want_depth, rtol=0, atol=2.5e-4)
    with pytest.raises(SgvlaError, match="one resolution"):
        frames_to_unit16([{"head_rgb": rgb, "hand_depth": mm[:8]}], ("head_rgb", "hand_depth"))
