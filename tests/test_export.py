"""`sgvla export --format lerobot`: the export read back with pyarrow / json / PIL and checked field by field
against LeRobot's published layout (v3.0 and v2.1) and openpi's norm_stats.json, with numpy on the source.

LeRobot itself cannot be installed here, so its rules are restated below from its source
(`lerobot/datasets/utils.py`, `feature_utils.py`, `compute_stats.py`, `dataset_metadata.py`, the v2.1
-> v3.0 conversion script, and for 2.1 the commit openpi pins) and the files are held to them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from sgvla.cli import app
from sgvla.dataset import export_lerobot as ex
from sgvla.dataset.schema import FEATURES, FPS, decode_png
from sgvla.dataset.synthetic import write_synthetic_dataset
from sgvla.errors import Interrupted
from sgvla.vocab import ACTION_DIM, QPOS_DIM

SIZE = 32  # small renders keep the module fast; the export reads the size from the data
TRAIN = [5, 7, 4, 120, 6]  # the 120-frame episode takes LeRobot's image sampling path (100 of 120 frames)
STAT_KEYS = {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
QS = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
#: LeRobot's DEFAULT_FEATURES (lerobot/utils/constants.py).
DEFAULT_FEATURES = {k: {"dtype": d, "shape": [1], "names": None} for k, d in (
    ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
    ("task_index", "int64"))}
CAMERA = {"observation.images.head": "head_rgb", "observation.images.hand": "hand_rgb",
          "observation.images.head_depth": "head_depth", "observation.images.hand_depth": "hand_depth",
          "mask.head": "head_mask", "mask.hand": "hand_mask"}


def _run(*args: str):
    return CliRunner().invoke(app, ["export", *map(str, args)])


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "ds"
    write_synthetic_dataset(root, "mini_kitchen", {"train": TRAIN, "val": [3, 4]}, episodes_per_shard=2, size=SIZE)
    return root


@pytest.fixture(scope="module")
def v30(ds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v30") / "lerobot"
    res = _run(ds, "--out", out)
    assert res.exit_code == 0, res.output
    assert "LeRobot v3.0, 5 episodes, 142 frames" in res.output
    return out


@pytest.fixture(scope="module")
def v21(ds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v21") / "lerobot"
    res = _run(ds, "--out", out, "--version", "2.1")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def src(ds) -> dict[str, np.ndarray | list]:
    """The train split as the export should see it: every shard in order, decoded to numpy."""
    tables = [pq.read_table(p) for p in sorted(ds.glob("mini_kitchen/data/train-*.parquet"))]
    t = pa.concat_tables(tables)
    out: dict = {}
    for name in t.column_names:
        col = t.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            out[name] = col.flatten().to_numpy().reshape(len(col), -1)
        elif pa.types.is_struct(col.type):
            out[name] = [decode_png(c) for c in col.to_pylist()]
        else:
            out[name] = np.asarray(col.to_pylist())
    return out


def _info(root: Path) -> dict:
    return json.loads((root / "meta/info.json").read_text())


def _data(root: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(root.glob("data/*/*.parquet"))])


def _col(t: pa.Table, name: str) -> np.ndarray:
    col = t.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy().reshape(len(col), -1)
    return col.to_numpy(zero_copy_only=False)


def _lengths() -> np.ndarray:
    return np.asarray(TRAIN)


def _sampled(length: int) -> np.ndarray:
    """LeRobot's `sample_indices` (compute_stats.py): all frames below 100, else max(100, min(len**0.75, 1e4))."""
    n = length if length < 100 else max(100, min(int(length**0.75), 10_000))
    return np.round(np.linspace(0, length - 1, n)).astype(int)


# ---------------------------------------------------------------- v3.0


def test_v30_info_json_has_lerobots_keys_totals_and_features(v30, src):
    info = _info(v30)
    assert set(info) == {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
                         "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
                         "data_path", "video_path", "features"}
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "fetch" and info["fps"] == FPS == 20
    assert info["total_episodes"] == len(TRAIN) and info["total_frames"] == sum(TRAIN)
    assert info["total_tasks"] == len(set(src["instruction"].tolist()))
    assert info["chunks_size"] == 1000 and info["data_files_size_in_mb"] == 100
    assert info["splits"] == {"train": f"0:{len(TRAIN)}"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] is None  # image mode: no videos
    ft = info["features"]
    for name in ("observation.images.head", "observation.images.hand"):
        assert ft[name] == {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"],
                            "info": {"is_depth_map": False}}
    for name in ("observation.images.head_depth", "observation.images.hand_depth"):
        assert ft[name] == {"dtype": "image", "shape": [SIZE, SIZE, 1], "names": ["height", "width", "channels"],
                            "info": {"is_depth_map": True, "depth_unit": "mm"}}
    for name in ("mask.head", "mask.hand"):
        assert ft[name]["dtype"] == "image" and ft[name]["shape"] == [SIZE, SIZE, 1]
        assert ft[name]["info"]["is_depth_map"] is False
    assert ft["observation.state"]["shape"] == [QPOS_DIM + 7] and len(ft["observation.state"]["names"]) == 19
    assert ft["observation.state"]["names"][:2] == ["torso_lift", "head_pan"]
    assert ft["observation.state"]["names"][-7:] == ["base_x", "base_y", "base_z", "base_qw", "base_qx", "base_qy",
                                                     "base_qz"]
    assert ft["action"] == {"dtype": "float32", "shape": [ACTION_DIM], "names": list(ex.ACTION_NAMES)}
    assert len(set(ft["action"]["names"])) == ACTION_DIM and len(set(ft["observation.state"]["names"])) == 19
    for name, dtype in (("next.reward", "float32"), ("next.success", "bool"), ("next.done", "bool"),
                        ("is_grasped", "bool"), ("subtask", "string")):
        assert ft[name] == {"dtype": dtype, "shape": [1], "names": None}, name
    assert ft["obj_pose"]["shape"] == [7] and ft["obj_pose_world"]["shape"] == [7]
    assert {k: ft[k] for k in DEFAULT_FEATURES} == DEFAULT_FEATURES
    assert list(ft)[-5:] == list(DEFAULT_FEATURES)  # LeRobot appends them after the dataset's own
    assert all("/" not in k for k in ft)  # LeRobot refuses feature names with '/'


def test_v30_data_columns_types_and_bookkeeping(v30, src):
    info = _info(v30)
    t = _data(v30)
    assert t.column_names == list(info["features"])  # no video features, so every feature is a column
    n = sum(TRAIN)
    assert t.num_rows == n
    # the types LeRobot's get_hf_features_from_features gives: image, Value for (1,), fixed-length list for (n,)
    hf = json.loads(t.schema.metadata[b"huggingface"])["info"]["features"]
    for name, ft in info["features"].items():
        typ = t.schema.field(name).type
        if ft["dtype"] == "image":
            assert typ == pa.struct([("bytes", pa.binary()), ("path", pa.string())]) and hf[name] == {"_type": "Image"}
        elif ft["shape"] == [1]:
            assert str(typ) == {"float32": "float", "bool": "bool", "int64": "int64", "string": "string"}[ft["dtype"]]
            assert hf[name] == {"dtype": ft["dtype"], "_type": "Value"}
        else:
            assert typ == pa.list_(pa.float32(), ft["shape"][0])
            assert hf[name]["_type"] == "Sequence" and hf[name]["length"] == ft["shape"][0]
    # bookkeeping: global index, episodes renumbered 0..N-1 in runs, frames 0..T-1, timestamps at fps
    assert np.array_equal(_col(t, "index"), np.arange(n))
    ep, frame = _col(t, "episode_index"), _col(t, "frame_index")
    assert np.array_equal(ep, np.repeat(np.arange(len(TRAIN)), TRAIN))
    assert np.array_equal(frame, np.concatenate([np.arange(k) for k in TRAIN]))
    assert np.allclose(_col(t, "timestamp"), frame / FPS, atol=1e-6) and _col(t, "timestamp").dtype == np.float32
    done = _col(t, "next.done")
    assert done.sum() == len(TRAIN) and np.array_equal(np.flatnonzero(done), np.cumsum(TRAIN) - 1)
    # values: renamed, not changed
    assert np.array_equal(_col(t, "observation.state"), np.concatenate([src["qpos"], src["base_pose"]], axis=1))
    for mine, theirs in (("action", "action"), ("obj_pose", "obj_pose"), ("obj_pose_world", "obj_pose_world"),
                         ("next.reward", "reward"), ("next.success", "success"), ("is_grasped", "is_grasped")):
        assert np.array_equal(_col(t, mine), src[theirs]), mine
    names = FEATURES["subtask"].names
    assert _col(t, "subtask").tolist() == [names[i] for i in src["subtask"]]


def test_v30_images_decode_to_the_source_pixels(v30, src):
    t = _data(v30)
    for name, field in CAMERA.items():
        cells = t.column(name).to_pylist()
        for i in (0, 5, 17, len(cells) - 1):
            with PILImage.open(io.BytesIO(cells[i]["bytes"])) as im:
                # the PIL modes LeRobot's reader turns into float [0, 1] RGB, float32 mm depth, 0/1 masks
                assert im.mode == {"rgb": "RGB", "depth": "I;16", "mask": "1"}[field.split("_")[1]], name
                assert np.array_equal(np.array(im), src[field][i]), (name, i)


def test_v30_episodes_and_tasks_tables(v30, src):
    info = _info(v30)
    eps = pq.read_table(v30 / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in eps] == list(range(len(TRAIN)))
    assert [e["length"] for e in eps] == TRAIN
    starts = np.concatenate([[0], np.cumsum(TRAIN)[:-1]])
    assert [e["dataset_from_index"] for e in eps] == starts.tolist()
    assert [e["dataset_to_index"] for e in eps] == (starts + TRAIN).tolist()
    t = _data(v30)
    index, episode = _col(t, "index"), _col(t, "episode_index")
    tasks = pq.read_table(v30 / "meta/tasks.parquet")
    assert set(tasks.column_names) == {"task_index", "task"}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas reads it as index
    task_of = dict(zip(tasks.column("task_index").to_pylist(), tasks.column("task").to_pylist(), strict=True))
    assert sorted(task_of) == list(range(info["total_tasks"]))
    for e in eps:
        assert {"meta/episodes/chunk_index", "meta/episodes/file_index"} <= set(e)
        path = v30 / info["data_path"].format(chunk_index=e["data/chunk_index"], file_index=e["data/file_index"])
        assert path.is_file()
        rows = slice(e["dataset_from_index"], e["dataset_to_index"])
        assert np.all(episode[rows] == e["episode_index"]) and index[rows][0] == e["dataset_from_index"]
        instructions = src["instruction"][rows].tolist()
        assert e["tasks"] == list(dict.fromkeys(instructions))
        assert [task_of[i] for i in _col(t, "task_index")[rows]] == instructions
    required = {"episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index"}
    stats_cols = {k for k in eps[0] if k.startswith("stats/")}
    assert set(eps[0]) == required | stats_cols
    features = [k for k, f in info["features"].items() if f["dtype"] != "string"]
    assert stats_cols == {f"stats/{f}/{s}" for f in features for s in STAT_KEYS}


def _expected_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    return {**out, **{k: np.quantile(x, q, axis=0) for k, q in QS.items()}}


def _expected_image_stats(frames: list[np.ndarray], scale: float) -> dict[str, np.ndarray]:
    a = np.stack([f[..., None] if f.ndim == 2 else f for f in frames]).astype(np.float64) * scale
    pix = a.reshape(-1, a.shape[-1])
    st = _expected_stats(pix)
    return {k: v.reshape(-1, 1, 1) for k, v in st.items()}


def _check_stats(got: dict, want: dict, count: int, what: str) -> None:
    assert set(got) == STAT_KEYS, what
    assert got["count"] == [count], what
    for k, v in want.items():
        assert np.shape(got[k]) == v.shape, (what, k)
        assert np.allclose(got[k], v, rtol=1e-6, atol=1e-6), (what, k, got[k], v)


def _source_numeric(src) -> dict[str, np.ndarray]:
    n = sum(TRAIN)
    frame = np.concatenate([np.arange(k) for k in TRAIN])
    return {"observation.state": np.concatenate([src["qpos"], src["base_pose"]], 1), "action": src["action"],
            "next.reward": src["reward"], "next.success": src["success"], "is_grasped": src["is_grasped"],
            "next.done": np.isin(np.arange(n), np.cumsum(TRAIN) - 1), "obj_pose": src["obj_pose"],
            "obj_pose_world": src["obj_pose_world"], "timestamp": (frame / FPS).astype(np.float32),
            "frame_index": frame, "episode_index": np.repeat(np.arange(len(TRAIN)), TRAIN), "index": np.arange(n)}


def _scale(name: str) -> float:
    return 1 / 255 if CAMERA[name].endswith("rgb") else 1.0


def test_v30_stats_json_matches_numpy_on_the_source(v30, src):
    info = _info(v30)
    stats = json.loads((v30 / "meta/stats.json").read_text())
    assert set(stats) == {k for k, f in info["features"].items() if f["dtype"] != "string"}
    for name, x in _source_numeric(src).items():
        _check_stats(stats[name], _expected_stats(x), sum(TRAIN), name)
        shape = (1,) if np.ndim(x) == 1 else (x.shape[1],)
        assert np.shape(stats[name]["mean"]) == shape, name
    starts = np.concatenate([[0], np.cumsum(TRAIN)[:-1]])
    picks = np.concatenate([s + _sampled(k) for s, k in zip(starts, TRAIN, strict=True)])
    assert len(picks) == sum(TRAIN) - 120 + 100
    for name, field in CAMERA.items():
        want = _expected_image_stats([src[field][i] for i in picks], _scale(name))
        _check_stats(stats[name], want, len(picks), name)
    assert np.shape(stats["observation.images.head"]["mean"]) == (3, 1, 1)
    assert np.shape(stats["observation.images.head_depth"]["mean"]) == (1, 1, 1)
    assert 0 <= np.min(stats["observation.images.hand"]["min"]) and np.max(stats["observation.images.hand"]["max"]) <= 1
    assert np.max(stats["observation.images.head_depth"]["max"]) > 255  # millimetres, not divided by 255


def test_v30_episode_stats_match_numpy_on_each_episode(v30, src):
    eps = pq.read_table(v30 / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    numeric = _source_numeric(src)
    for e in eps:
        rows = slice(e["dataset_from_index"], e["dataset_to_index"])
        for name in ("observation.state", "action", "next.reward", "index", "task_index"):
            got = {k.rsplit("/", 1)[1]: v for k, v in e.items() if k.startswith(f"stats/{name}/")}
            x = numeric[name][rows] if name != "task_index" else _col(_data(v30), "task_index")[rows]
            _check_stats(got, _expected_stats(x), e["length"], f"{name} ep {e['episode_index']}")
        picks = e["dataset_from_index"] + _sampled(e["length"])
        for name in ("observation.images.hand", "observation.images.head_depth", "mask.head"):
            got = {k.rsplit("/", 1)[1]: v for k, v in e.items() if k.startswith(f"stats/{name}/")}
            want = _expected_image_stats([src[CAMERA[name]][i] for i in picks], _scale(name))
            _check_stats(got, want, len(picks), f"{name} ep {e['episode_index']}")


def test_v30_splits_data_files_by_size_and_every_path_resolves(ds, src, tmp_path):
    out = tmp_path / "small-files"
    s = ex.export_lerobot(ds, out, data_file_mb=0.01, progress=False)  # 10 KB: one episode per file
    assert (s.episodes, s.frames) == (len(TRAIN), sum(TRAIN))
    info = _info(out)
    assert info["data_files_size_in_mb"] == 0.01
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    referenced = set()
    for e in eps:
        path = out / info["data_path"].format(chunk_index=e["data/chunk_index"], file_index=e["data/file_index"])
        t = pq.read_table(path)
        referenced.add(path)
        ep = _col(t, "episode_index")
        assert (ep == e["episode_index"]).sum() == e["length"]
        pf = pq.ParquetFile(path)  # one row group per episode
        assert pf.metadata.num_row_groups == len(np.unique(ep))
    assert [e["data/file_index"] for e in eps] == list(range(len(TRAIN)))
    assert referenced == set(out.glob("data/*/*.parquet"))
    assert np.array_equal(_col(_data(out), "index"), np.arange(sum(TRAIN)))


# ---------------------------------------------------------------- v2.1


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_v21_layout_tables_and_statistics(v21, v30, src):
    info = _info(v21)
    assert set(info) == {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
                         "total_videos", "total_chunks", "chunks_size", "fps", "splits", "data_path", "video_path",
                         "features"}
    assert info["codebase_version"] == "v2.1" and info["total_chunks"] == 1 and info["total_videos"] == 0
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert info["features"] == _info(v30)["features"]
    v3 = _info(v30)
    assert all(info[k] == v3[k] for k in ("total_episodes", "total_frames", "total_tasks", "fps", "robot_type"))
    episodes = _jsonl(v21 / "meta/episodes.jsonl")
    assert [set(e) for e in episodes] == [{"episode_index", "tasks", "length"}] * len(TRAIN)
    assert [e["length"] for e in episodes] == TRAIN
    files = sorted(v21.glob("data/*/*.parquet"))
    assert len(files) == len(TRAIN)
    for e in episodes:
        path = v21 / info["data_path"].format(episode_chunk=e["episode_index"] // info["chunks_size"],
                                              episode_index=e["episode_index"])
        t = pq.read_table(path)
        assert t.num_rows == e["length"] and set(_col(t, "episode_index")) == {e["episode_index"]}
        assert t.column_names == list(info["features"])
    assert _data(v21).equals(_data(v30))  # the same rows, one file per episode
    tasks = _jsonl(v21 / "meta/tasks.jsonl")
    v3_tasks = pq.read_table(v30 / "meta/tasks.parquet")
    assert tasks == [{"task_index": i, "task": t} for i, t in zip(v3_tasks.column("task_index").to_pylist(),
                                                                  v3_tasks.column("task").to_pylist(), strict=True)]
    ep_stats = _jsonl(v21 / "meta/episodes_stats.jsonl")
    assert [s["episode_index"] for s in ep_stats] == list(range(len(TRAIN)))
    v3_eps = pq.read_table(v30 / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    for s, e3 in zip(ep_stats, v3_eps, strict=True):
        # LeRobot 2.1's _assert_type_and_shape: arrays of ndim >= 1, count (1,), any key with "image" (3, 1, 1)
        for feat, st in s["stats"].items():
            assert set(st) == STAT_KEYS and np.shape(st["count"]) == (1,)
            assert all(np.ndim(v) >= 1 for v in st.values())
            if "image" in feat:
                assert all(np.shape(v) == (3, 1, 1) for k, v in st.items() if k != "count"), feat
            assert st == {k.rsplit("/", 1)[1]: v for k, v in e3.items() if k.startswith(f"stats/{feat}/")}, feat
        assert "observation.images.head_depth" not in s["stats"] and "mask.head" in s["stats"]
    assert json.loads((v21 / "meta/stats.json").read_text()) == json.loads((v30 / "meta/stats.json").read_text())


def test_exports_load_with_datasets_as_lerobot_loads_them(v21, v30, tmp_path):
    """2.1 loads the data folder with `load_dataset("parquet")` (types from the Parquet metadata, which
    `datasets` 3.x must parse: no "List" spelling); 3.0 with `Dataset.from_parquet`."""
    import datasets

    for root in (v21, v30):
        meta = pq.read_schema(next(root.glob("data/*/*.parquet"))).metadata[b"huggingface"].decode()
        assert '"List"' not in meta
    d = datasets.load_dataset("parquet", data_dir=str(v21 / "data"), split="train", cache_dir=str(tmp_path))
    row = d[0]
    assert isinstance(row["observation.images.head"], PILImage.Image) and row["observation.images.head"].mode == "RGB"
    assert row["observation.images.head_depth"].mode == "I;16" and row["mask.hand"].mode == "1"
    assert len(row["observation.state"]) == 19 and isinstance(row["subtask"], str)
    d3 = datasets.Dataset.from_parquet([str(p) for p in sorted(v30.glob("data/*/*.parquet"))],
                                       cache_dir=str(tmp_path))
    assert len(d3) == sum(TRAIN) and d3.features["action"].length == ACTION_DIM


# ---------------------------------------------------------------- openpi


def test_openpi_norm_stats_json(v30, v21, src):
    doc = json.loads((v30 / "norm_stats.json").read_text())
    assert set(doc) == {"norm_stats"} and set(doc["norm_stats"]) == {"state", "actions"}
    numeric = _source_numeric(src)
    for key, feature in (("state", "observation.state"), ("actions", "action")):
        st = doc["norm_stats"][key]
        assert set(st) == {"mean", "std", "q01", "q99"}  # openpi's NormStats fields
        want = _expected_stats(numeric[feature])
        for k in st:
            assert np.allclose(st[k], want[k], rtol=1e-6, atol=1e-7), (key, k)
    assert json.loads((v21 / "norm_stats.json").read_text()) == doc


# ---------------------------------------------------------------- configs, splits, errors


def test_every_config_by_default_and_config_split_select(tmp_path):
    root = tmp_path / "two"
    write_synthetic_dataset(root, "mini_kitchen", {"train": [3, 4]}, size=16)
    write_synthetic_dataset(root, "tidy_house", {"train": [2], "val": [5]}, size=16)
    both = ex.export_lerobot(root, tmp_path / "both", progress=False)
    assert (both.episodes, both.frames) == (3, 9)
    t = _data(tmp_path / "both")
    assert np.array_equal(_col(t, "episode_index"), np.repeat([0, 1, 2], [3, 4, 2]))
    assert np.array_equal(_col(t, "index"), np.arange(9))
    one = ex.export_lerobot(root, tmp_path / "one", config="tidy_house", split="val", progress=False)
    assert (one.episodes, one.frames) == (1, 5)
    assert _info(tmp_path / "one")["splits"] == {"val": "0:1"}


def _one_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in errors[0], (n, errors[0])


def test_bad_input_is_one_error_line(ds, tmp_path):
    _one_error(_run(tmp_path / "nope", "--out", tmp_path / "o"), "does not exist")
    _one_error(_run(ds, "--out", tmp_path / "o", "--version", "4.0"), "--version", "3.0", "2.1")
    _one_error(_run(ds, "--out", tmp_path / "o", "--format", "rlds"), "--format")
    _one_error(_run(ds, "--out", tmp_path / "o", "--config", "set_table"), "--config", "mini_kitchen")
    _one_error(_run(ds, "--out", tmp_path / "o", "--split", "dev"), "--split", "train")
    _one_error(_run(ds, "--out", ds / "export", "--overwrite"), "--out", "overlaps")
    _one_error(_run(ds, "--out", ds.parent, "--overwrite"), "--out", "overlaps")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    _one_error(_run(ds, "--out", busy), "--out", "not empty", "--overwrite")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "o").exists()
    assert ds.is_dir() and any(ds.glob("mini_kitchen/data/*.parquet"))


def test_overwrite_replaces_and_an_interrupted_export_leaves_out_as_it_was(ds, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    calls = {"n": 0}
    real_add = ex.V30Data.add

    def add_then_stop(self, table):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_add(self, table)

    monkeypatch.setattr(ex.V30Data, "add", add_then_stop)
    with pytest.raises(Interrupted, match="left as it was"):
        ex.export_lerobot(ds, out, overwrite=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left beside it
    monkeypatch.setattr(ex.V30Data, "add", real_add)
    res = _run(ds, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (out / "old.txt").exists() and (out / "meta/info.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stats_helpers_are_numpys():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 65536, (4, 9, 7, 1), dtype=np.uint16)
    got = ex.histogram_stats(ex.pixel_histogram(frames, 65536), 4, 1.0)
    want = _expected_image_stats(list(frames), 1.0)
    _check_stats(got, want, 4, "depth histogram")
    assert ex.stats_frames(99).tolist() == list(range(99)) and len(ex.stats_frames(1000)) == 177
