"""Statistics, card and finalize: what `sgvla gen` relies on to turn shards into a loadable dataset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from datasets.exceptions import NonMatchingSplitsSizesError
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from sgvla.dataset.schema import FEATURES, STATS_FIELDS, shard_path
from sgvla.dataset.stats import EXACT_ROWS, merge_field, merge_stats, points_of, shard_stats
from sgvla.dataset.synthetic import write_synthetic_dataset
from sgvla.errors import SgvlaError


@pytest.fixture(scope="module")
def two_task_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    write_synthetic_dataset(root, "mini_kitchen", {"train": [5, 7, 4, 6, 3], "val": [5, 3]},
                            episodes_per_shard=2, finalize=False)
    write_synthetic_dataset(root, "set_table", {"train": [4, 4]}, episodes_per_shard=1, seed=1)
    return root


def _vectors(root, glob):
    cols = {k: [] for k in STATS_FIELDS}
    for p in sorted(root.glob(glob)):
        t = pq.read_table(p, columns=list(STATS_FIELDS))
        for k in STATS_FIELDS:
            cols[k].append(np.asarray(t.column(k).to_pylist(), np.float32))
    return {k: np.concatenate(v) for k, v in cols.items()}


def test_stats_equal_direct_recomputation_over_train_splits(two_task_ds):
    stats = json.loads((two_task_ds / "meta/stats.json").read_text())
    data = _vectors(two_task_ds, "*/data/train-*.parquet")
    assert stats["num_transitions"] == len(data["action"]) == 5 + 7 + 4 + 6 + 3 + 4 + 4
    assert stats["num_episodes"] == 7
    assert stats["quantiles"] == "exact"
    for name in STATS_FIELDS:
        x = data[name].astype(np.float64)
        if name == "obj_pose":  # all-zero poses mean "no pose" and are left out
            x = x[np.any(x != 0, axis=1)]
            assert len(x) < len(data[name])
        s = stats[name]
        assert s["count"] == len(x)
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(np.float32(s["min"]), x.min(0).astype(np.float32))
        np.testing.assert_array_equal(np.float32(s["max"]), x.max(0).astype(np.float32))
        np.testing.assert_allclose(s["q01"], np.quantile(x, 0.01, axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s["q99"], np.quantile(x, 0.99, axis=0), rtol=1e-12, atol=1e-12)


def test_counts_per_config_split_and_subtask(two_task_ds):
    c = json.loads((two_task_ds / "meta/stats.json").read_text())["counts"]
    assert c["mini_kitchen"]["train"]["episodes"] == 5
    assert c["mini_kitchen"]["val"]["transitions"] == 8
    # subtasks cycle pick, place, open, close, pick over the 5 episodes
    assert c["mini_kitchen"]["train"]["subtasks"]["pick"] == {"episodes": 2, "transitions": 5 + 3}
    assert c["set_table"]["train"]["subtasks"] == {"open": {"episodes": 1, "transitions": 4},
                                                   "pick": {"episodes": 1, "transitions": 4}}


def test_large_shards_merge_to_close_quantiles_and_exact_moments():
    rng = np.random.default_rng(0)
    shards = [rng.standard_t(3, size=(n, 13)).astype(np.float32) for n in (3000, 500, 4100, 2000)]
    parts = []
    for x in shards:
        cols = {k: np.zeros((len(x), d), np.float32) for k, d in (("qpos", 12), ("base_pose", 7),
                                                                   ("obj_pose", 7))}
        st = shard_stats({"action": x, **cols, "episode_index": np.arange(len(x)) // 50,
                          "subtask": np.zeros(len(x), int)})
        assert len(points_of(st["fields"]["action"], 13)) == min(len(x), EXACT_ROWS)
        parts.append(json.loads(json.dumps(st))["fields"]["action"])
    merged, exact = merge_field(parts, 13)
    allx = np.concatenate(shards).astype(np.float64)
    assert not exact
    np.testing.assert_allclose(merged["mean"], allx.mean(0), atol=1e-9)
    np.testing.assert_allclose(merged["std"], allx.std(0), rtol=1e-9)
    np.testing.assert_array_equal(np.float32(merged["min"]), allx.min(0).astype(np.float32))
    for key, q in (("q01", 0.01), ("q99", 0.99)):
        # rank error bounded by 1/EXACT_ROWS of the data
        lo = np.quantile(allx, q - 1.5 / EXACT_ROWS, axis=0)
        hi = np.quantile(allx, q + 1.5 / EXACT_ROWS, axis=0)
        assert np.all((np.asarray(merged[key]) >= lo) & (np.asarray(merged[key]) <= hi)), key


def test_card_yaml_parses_and_matches_the_data(two_task_ds):
    data = DatasetCard.load(two_task_ds / "README.md").data
    assert data.license and data.task_categories == ["robotics"] and "robotics" in data.tags
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert sorted(configs) == ["mini_kitchen", "set_table"]
    infos = DatasetInfosDict.from_dataset_card_data(data)
    assert infos["mini_kitchen"].features == FEATURES
    rows = {s: sum(pq.ParquetFile(p).metadata.num_rows
                   for p in two_task_ds.glob(f"mini_kitchen/data/{s}-*.parquet")) for s in ("train", "val")}
    assert {k: v.num_examples for k, v in infos["mini_kitchen"].splits.items()} == rows
    text = (two_task_ds / "README.md").read_text()
    for needle in ("| mini_kitchen | train | **all** | **5** | **25** |", "`head_depth / hand_depth`",
                   "load_dataset(", "synthetic.h5", "millimetres"):
        assert needle in text


def test_load_dataset_gives_typed_features_local_and_streaming(two_task_ds, tmp_path):
    ds = load_dataset(str(two_task_ds), "mini_kitchen", split="train", cache_dir=str(tmp_path))
    assert ds.features == FEATURES and len(ds) == 25
    row = ds[0]
    assert np.asarray(row["head_depth"]).dtype == np.uint16
    assert np.asarray(row["head_mask"]).dtype == bool
    assert np.asarray(row["head_rgb"]).shape == (128, 128, 3)
    assert len(row["action"]) == 13 and ds.features["subtask"].int2str(row["subtask"]) == "pick"
    st = load_dataset(str(two_task_ds), "set_table", split="train", streaming=True)
    rows = list(st)
    assert len(rows) == 8 and st.features == FEATURES
    assert [r["episode_index"] for r in rows] == [0] * 4 + [1] * 4


def test_stale_card_fails_loading_and_finalize_fixes_it(two_task_ds, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(two_task_ds, root)
    extra = root / shard_path("set_table", "train", 0, 2)
    shutil.copy(extra, root / "set_table/data/train-00000-of-00002-extra.parquet")  # unknown name: ignored
    one = root / shard_path("set_table", "train", 1, 2)
    shutil.copy(extra, one.with_name("train-00002-of-00002.parquet"))
    with pytest.raises(NonMatchingSplitsSizesError):
        load_dataset(str(root), "set_table", split="train", cache_dir=str(tmp_path / "c1"))
    meta = root / "meta/shards/set_table"
    shutil.copy(meta / "train-00000.json", meta / "train-00002.json")
    from sgvla.dataset.finalize import finalize_dataset

    finalize_dataset(root, "cmd", [])
    assert len(load_dataset(str(root), "set_table", split="train", cache_dir=str(tmp_path / "c2"))) == 12
    counts = json.loads((root / "meta/stats.json").read_text())["counts"]
    assert counts["set_table"]["train"]["transitions"] == 12


def test_merge_stats_refuses_a_shard_without_statistics(two_task_ds, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(two_task_ds, root)
    (root / "meta/shards/set_table/train-00001.json").unlink()
    with pytest.raises(SgvlaError, match="train-00001.json"):
        merge_stats(root)


def test_statistics_of_an_unfinished_shard_are_ignored(two_task_ds, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(two_task_ds, root)
    before = json.loads((root / "meta/stats.json").read_text())
    # a crash after the stats file but before the shard rename leaves stats without a shard
    meta = root / "meta/shards/set_table"
    shutil.copy(meta / "train-00000.json", meta / "train-00007.json")
    assert merge_stats(root)["num_transitions"] == before["num_transitions"]


def test_card_reports_the_run_summary_of_the_manifest(two_task_ds, tmp_path):
    from sgvla.dataset.card import write_card

    root = tmp_path / "ds"
    shutil.copytree(two_task_ds, root)
    manifest = {"kept": [{"reason": ""}] * 7, "failed": [],
                "dropped": [{"reason": "demo not reproduced at step 12"}, {"reason": "demo not reproduced at step 3"},
                            {"reason": "target never visible"}]}
    (root / "meta/manifest.json").write_text(json.dumps(manifest))
    text = write_card(root, "sgvla gen --task mini_kitchen --out ds", ["demos/pick.h5"]).read_text()
    assert "kept: 7, dropped: 3, failed: 0" in text
    assert "| demo not reproduced | 2 |" in text and "| target never visible | 1 |" in text
    assert "sgvla gen --task mini_kitchen --out ds" in text and "`demos/pick.h5`" in text
