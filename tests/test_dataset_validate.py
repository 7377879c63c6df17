"""`sgvla validate` finds each defect it claims to, on folders broken the way real ones break."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from sgvla.cli import app
from sgvla.dataset.schema import encode_rgb, shard_path
from sgvla.dataset.shards import rows_to_table, write_shard
from sgvla.dataset.synthetic import write_synthetic_dataset
from sgvla.dataset.validate import validate_dataset
from sgvla.errors import SgvlaError

CONFIG = "mini_kitchen"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return write_synthetic_dataset(root, CONFIG, {"train": [4, 5, 3, 4, 3], "val": [3]}, episodes_per_shard=2)


@pytest.fixture
def ds(good, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(good, root)
    return root


def shard(root, i=0, n=3, split="train"):
    return root / shard_path(CONFIG, split, i, n)


def rewrite(path, fn):
    """Load a shard's rows, let `fn` edit the column lists, write it back through the normal writer."""
    cols = pq.read_table(path).to_pydict()
    write_shard(path, rows_to_table(fn(cols)))


def png(arr, mode=None):
    buf = io.BytesIO()
    PILImage.fromarray(arr, mode=mode).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def set_cell(field, row, value):
    def fn(cols):
        cols[field][row] = value
        return cols
    return fn


def drop_row(row):
    def fn(cols):
        return {k: v[:row] + v[row + 1:] for k, v in cols.items()}
    return fn


def test_a_good_folder_is_valid_and_the_cli_exits_0(good):
    assert validate_dataset(good) == []
    res = CliRunner().invoke(app, ["validate", str(good)])
    assert res.exit_code == 0, res.output
    assert "ok:" in res.output


def _nan(cols):
    cols["action"][2] = [float("nan")] + cols["action"][2][1:]
    return cols


def _inf_reward(cols):
    cols["reward"][1] = float("inf")
    return cols


def _unsorted(cols):
    return {k: [v[1], v[0], *v[2:]] for k, v in cols.items()}


def _mixed_subtask(cols):
    cols["subtask"][1] = (cols["subtask"][1] + 1) % 4
    return cols


CELL_DEFECTS = {
    "nan action": (_nan, "NaN/inf in 'action'"),
    "inf reward": (_inf_reward, "NaN/inf in 'reward'"),
    "missing frame": (drop_row(1), "episode 0 frames are not 0..T-1"),
    "unsorted rows": (_unsorted, "not sorted by (episode_index, frame_index)"),
    "mixed subtask": (_mixed_subtask, "episode 0 mixes subtasks"),
    "undecodable image": (set_cell("hand_rgb", 3, {"bytes": b"garbage", "path": None}),
                          "hand_rgb undecodable"),
    "non-binary mask": (set_cell("head_mask", 0, png(np.tile(np.arange(128, dtype=np.uint8), (128, 1)))),
                        "head_mask mask is not binary"),
    "8-bit depth": (set_cell("head_depth", 0, png(np.full((128, 128), 200, np.uint8))),
                    "head_depth mode L, expected I;16"),
    "wrong image size": (set_cell("head_rgb", 2, encode_rgb(np.zeros((64, 64, 3), np.uint8))),
                         "head_rgb size (64, 64)"),
}


@pytest.mark.parametrize("name", list(CELL_DEFECTS))
def test_each_row_defect_is_reported_naming_the_shard(ds, name):
    fn, needle = CELL_DEFECTS[name]
    rewrite(shard(ds), fn)
    problems = validate_dataset(ds)
    hits = [p for p in problems if needle in p]
    assert hits, problems
    assert str(shard(ds)) in hits[0]


def test_an_episode_split_across_shards_is_reported(ds):
    a, b = pq.read_table(shard(ds, 0)).to_pydict(), pq.read_table(shard(ds, 1)).to_pydict()
    # move the last two frames of episode 1 into the next shard (still sorted there)
    write_shard(shard(ds, 0), rows_to_table({k: v[:-2] for k, v in a.items()}))
    write_shard(shard(ds, 1), rows_to_table({k: a[k][-2:] + b[k] for k in a}))
    problems = validate_dataset(ds)
    assert any("episode 1 is split across shards" in p for p in problems), problems


def test_wrong_schema_is_reported(ds):
    t = pq.read_table(shard(ds))
    short = pa.array([v[:12] for v in t.column("action").to_pylist()], pa.list_(pa.float32(), 12))
    pq.write_table(t.set_column(t.schema.get_field_index("action"), "action", short), shard(ds))
    problems = validate_dataset(ds)
    needle = "column 'action' has type fixed_size_list<element: float>[12]"
    assert any(needle in p for p in problems), problems


def test_missing_shard_and_stray_file_are_reported(ds):
    shard(ds, 1).rename(ds / CONFIG / "data" / "leftover.parquet")
    problems = validate_dataset(ds)
    assert any("train shards [1] of 3 are missing" in p for p in problems), problems
    assert any("leftover.parquet: stray Parquet file" in p for p in problems), problems
    assert any("stale card" in p for p in problems), problems


def test_statistics_problems_are_reported(ds):
    (ds / "meta/shards" / CONFIG / "val-00000.json").unlink()
    stats = json.loads((ds / "meta/stats.json").read_text())
    stats["action"]["mean"][3] += 0.5
    stats["qpos"]["q99"][0] = stats["qpos"]["max"][0] + 1
    (ds / "meta/stats.json").write_text(json.dumps(stats))
    problems = validate_dataset(ds)
    assert any("val-00000.json: missing" in p for p in problems), problems
    assert any("action: mean disagree with the data" in p for p in problems), problems
    assert any("qpos: q99 disagree with the data" in p for p in problems), problems


def test_missing_stats_and_card_are_reported_and_the_cli_exits_1(ds):
    (ds / "meta/stats.json").unlink()
    (ds / "README.md").unlink()
    res = CliRunner().invoke(app, ["validate", str(ds)])
    assert res.exit_code == 1
    assert "stats.json: missing" in res.output and "README.md: missing dataset card" in res.output


def test_an_unknown_config_folder_is_reported_not_raised(ds):
    (ds / CONFIG).rename(ds / "kitchen2")  # e.g. a hand-renamed config
    problems = validate_dataset(ds)
    assert any("config 'kitchen2' is not a known task" in p for p in problems), problems
    res = CliRunner().invoke(app, ["validate", str(ds)])
    assert res.exit_code == 1 and "kitchen2" in res.output, res.output


def test_not_a_dataset_is_a_one_line_error(tmp_path):
    with pytest.raises(SgvlaError, match="no <task>/data"):
        validate_dataset(tmp_path)
    res = CliRunner().invoke(app, ["validate", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output



def test_a_shard_whose_episodes_were_all_dropped_is_valid_and_loads(ds, tmp_path):
    from datasets import load_dataset

    from sgvla.dataset.finalize import finalize_dataset
    from sgvla.dataset.schema import FEATURES, STATS_FIELDS, VECTOR_FIELDS
    from sgvla.dataset.stats import shard_stats, write_shard_stats

    write_shard(shard(ds, 1), rows_to_table({k: [] for k in FEATURES}))
    empty = {k: np.zeros((0, VECTOR_FIELDS[k]), np.float32) for k in STATS_FIELDS}
    write_shard_stats(ds, CONFIG, "train", 1, shard_stats({**empty, "episode_index": np.zeros(0, int),
                                                           "subtask": np.asarray([], str)}))
    finalize_dataset(ds, "cmd", [])
    assert validate_dataset(ds) == []
    assert len(load_dataset(str(ds), CONFIG, split="train", cache_dir=str(tmp_path / "c"))) == 4 + 5 + 3


def test_an_empty_row_group_is_reported(ds):
    pq.write_table(pq.read_table(shard(ds, 1)).slice(0, 0), shard(ds, 1))
    assert any("empty row group" in p for p in validate_dataset(ds))
