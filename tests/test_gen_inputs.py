"""`sgvla gen` inputs without a simulator: demo files (ours and MS-HAB's exact layout), the plan,
resume bookkeeping, the drift rule and every bad-input error."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from sgvla.cli import app
from sgvla.datagen import mshab
from sgvla.datagen.drift import DriftCheck, DriftTolerance
from sgvla.datagen.pipeline import run_gen
from sgvla.datagen.plan import build_plan, load_plan, outcomes_path, shard_done, store_plan
from sgvla.datagen.sources import find_demo_files, read_demo_file, read_episode
from sgvla.dataset.layout import shard_stats_path
from sgvla.errors import SgvlaError

T = 6


def write_mshab_file(path: Path, n_eps: int = 3, T: int = T, subtask: str = "pick", seed: int = 0) -> Path:
    """A small demo pair in MS-HAB's published layout (gen_data.py + its RecordEpisode fork)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    episodes = []
    with h5py.File(path, "w") as h5:
        for i in range(n_eps):
            g = h5.create_group(f"traj_{i}")
            obs = g.create_group("obs")
            obs["agent/qpos"] = rng.normal(size=(T + 1, 12)).astype(np.float32)
            obs["agent/qvel"] = rng.normal(size=(T + 1, 12)).astype(np.float32)
            for k in ("tcp_pose_wrt_base", "obj_pose_wrt_base"):
                pose = rng.normal(size=(T + 1, 7)).astype(np.float32)
                pose[:, 3:] /= np.linalg.norm(pose[:, 3:], axis=1, keepdims=True)
                obs[f"extra/{k}"] = pose
            obs["extra/goal_pos_wrt_base"] = rng.normal(size=(T + 1, 3)).astype(np.float32)
            obs["extra/is_grasped"] = np.arange(T + 1) > T // 2
            for cam in ("fetch_head", "fetch_hand"):
                obs[f"sensor_param/{cam}/extrinsic_cv"] = np.zeros((T + 1, 3, 4), np.float32)
                obs[f"sensor_param/{cam}/cam2world_gl"] = np.tile(np.eye(4, dtype=np.float32), (T + 1, 1, 1))
                obs[f"sensor_param/{cam}/intrinsic_cv"] = np.tile(np.eye(3, dtype=np.float32), (T + 1, 1, 1))
                obs.create_dataset(f"sensor_data/{cam}/rgb", data=np.zeros((T + 1, 128, 128, 3), np.uint8),
                                   compression="gzip", compression_opts=5)
                obs.create_dataset(f"sensor_data/{cam}/depth", data=np.full((T + 1, 128, 128, 1), 900, np.int16),
                                   compression="gzip", compression_opts=5)
            g["actions"] = rng.uniform(-1, 1, size=(T, 13)).astype(np.float32)
            for k in ("terminated", "truncated", "fail"):
                g[k] = np.zeros(T, bool)
            g["success"] = np.arange(T) >= T - 2
            g["rewards"] = rng.uniform(size=T).astype(np.float32)
            episodes.append({
                "episode_id": i, "episode_seed": list(range(2024, 2024 + 252)),
                "build_config_idx": 3 + i % 2, "task_plan_idx": 10 + i, "init_config_idx": 7 * i,
                "spawn_selection_idx": 40 + i, "control_mode": "pd_joint_delta_pos", "elapsed_steps": T,
                "label": "straightforward_success", "events": ["contact", "grasped", "success"],
                "events_verbose": [], "articulation_type": None, "reset_kwargs": {},
                "success_once": True, "success_at_end": True, "fail": False, "subtask_uid": f"uid-{i}",
            })
    doc = {
        "env_info": {
            "env_id": f"{subtask.capitalize()}SubtaskTrain-v0",
            "env_kwargs": {"obs_mode": "rgbd", "reward_mode": "normalized_dense",
                           "control_mode": "pd_joint_delta_pos", "render_mode": "all", "shader_dir": "minimal",
                           "robot_uids": "fetch", "sim_backend": "gpu", "num_envs": 252,
                           "require_build_configs_repeated_equally_across_envs": False,
                           "add_event_tracker_info": True, "robot_force_mult": 0.001,
                           "robot_force_penalty_min": 0.2, "target_randomization": False},
            "max_episode_steps": 200},
        "commit_info": None, "source_type": "RL",
        "source_desc": f"RL policy trained exclusively to {subtask} {path.stem} in the tidy_house task.",
        "episodes": episodes,
    }
    path.with_suffix(".json").write_text(json.dumps(doc))
    return path


# ---------------------------------------------------------------- demo files


def test_mshab_file_is_read_as_mshab_kind(tmp_path):
    f = read_demo_file(write_mshab_file(tmp_path / "pick" / "024_bowl.h5"))
    assert (f.kind, f.subtask, f.target, f.env_id) == ("mshab", "pick", "024_bowl", "PickSubtaskTrain-v0")
    assert [e.length for e in f.episodes] == [T] * 3
    assert f.episodes[1].reset_idxs == {"build_config_idx": 4, "task_plan_idx": 11, "init_config_idx": 7,
                                        "spawn_selection_idx": 41}
    assert f.episodes[0].recorded_success is True
    arr = read_episode(f.path, "traj_2")
    assert arr.actions.shape == (T, 13) and arr.env_states is None
    assert arr.qpos.shape == (T + 1, 12) and set(arr.extra) >= {"obj_pose_wrt_base", "is_grasped"}


def test_mshab_reset_options_recreate_each_episode(tmp_path):
    f = read_demo_file(write_mshab_file(tmp_path / "024_bowl.h5"))
    opts = mshab.reset_options(list(f.episodes[:2]), reconfigure=True)
    assert opts["reconfigure"] is True
    assert opts["build_config_idxs"] == [3, 4] and opts["spawn_selection_idxs"] == [40, 41]
    assert opts["task_plan_idxs"].tolist() == [10, 11]


def test_corrupt_h5_is_a_clear_error(tmp_path):
    p = write_mshab_file(tmp_path / "024_bowl.h5")
    data = p.read_bytes()
    p.write_bytes(b"\x00" * 64 + data[64:2000])
    with pytest.raises(SgvlaError, match="not a readable HDF5 file.*re-download"):
        read_demo_file(p)


def test_json_not_matching_its_h5_is_a_clear_error(tmp_path):
    p = write_mshab_file(tmp_path / "024_bowl.h5")
    doc = json.loads(p.with_suffix(".json").read_text())
    doc["episodes"][1]["elapsed_steps"] = T + 5
    p.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(SgvlaError, match=r"does not match .*024_bowl\.h5.*traj_1 has 6 actions"):
        read_demo_file(p)
    doc["episodes"][1]["elapsed_steps"] = T
    doc["episodes"].append(dict(doc["episodes"][0], episode_id=9))
    p.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(SgvlaError, match="no traj_9"):
        read_demo_file(p)


def test_missing_json_and_bad_json(tmp_path):
    p = write_mshab_file(tmp_path / "024_bowl.h5")
    p.with_suffix(".json").write_text("{not json")
    with pytest.raises(SgvlaError, match="not valid JSON"):
        read_demo_file(p)
    p.with_suffix(".json").unlink()
    with pytest.raises(SgvlaError, match="has no JSON next to it"):
        read_demo_file(p)


def test_find_demo_files_by_subtask_folder(tmp_path):
    write_mshab_file(tmp_path / "pick" / "024_bowl.h5")
    write_mshab_file(tmp_path / "pick" / "013_apple.h5")
    write_mshab_file(tmp_path / "place" / "024_bowl.h5", subtask="place")
    files = find_demo_files(tmp_path, ("pick", "place"))
    assert [f.target for f in files["pick"]] == ["013_apple", "024_bowl"]
    assert [f.subtask for f in files["place"]] == ["place"]
    with pytest.raises(SgvlaError, match="no demonstrations for subtask.*open"):
        find_demo_files(tmp_path, ("pick", "open"))


# ---------------------------------------------------------------- drift rule


def test_drift_check_accepts_the_recording_and_flags_the_first_bad_step(tmp_path):
    arr = read_episode(write_mshab_file(tmp_path / "024_bowl.h5"), "traj_0")
    extra = {k: v for k, v in arr.extra.items()}
    same = DriftCheck(arr.qpos, arr.extra, DriftTolerance(qpos=0.1, position=0.05))
    for t in range(T + 1):
        flipped = {k: (v[t] * np.r_[np.ones(3), -np.ones(4)] if v.shape[-1:] == (7,) else v[t])
                   for k, v in extra.items()}  # q and -q: same rotation
        assert same.update(t, arr.qpos[t], flipped) is None
    assert max(same.max_error.values()) < 1e-6

    off = DriftCheck(arr.qpos, arr.extra, DriftTolerance(qpos=0.1, position=0.05))
    for t in range(T + 1):
        q = arr.qpos[t] + (0.3 if t >= 4 else 0.0)
        off.update(t, q, {k: v[t] for k, v in extra.items()})
    assert off.violation == "drift: qpos off by 0.3 > 0.1 at step 4"

    pos = DriftCheck(arr.qpos, arr.extra)
    moved = arr.extra["obj_pose_wrt_base"][2].copy()
    moved[0] += 0.2
    pos.update(2, arr.qpos[2], {"obj_pose_wrt_base": moved})
    assert pos.violation.startswith("drift: extra/obj_pose_wrt_base off by 0.2")


def test_drift_check_sees_the_fingers_and_the_grasp(tmp_path):
    """Fingers travel 0-0.05 m, under the 0.1 joint tolerance; a grasp that differs from the
    recording for more than a few steps is a different episode."""
    n = 12
    arr = read_episode(write_mshab_file(tmp_path / "024_bowl.h5", T=n), "traj_0")
    fingers = DriftCheck(arr.qpos, arr.extra)
    q = arr.qpos[1].copy()
    q[-1] += 0.02
    assert fingers.update(1, q) == "drift: fingers off by 0.02 > 0.01 at step 1"

    grasp = DriftCheck(arr.qpos, arr.extra)
    rec = arr.extra["is_grasped"]
    for t in range(n + 1):  # disagree for 2 steps: tolerated (contact onset jitter)
        grasp.update(t, arr.qpos[t], {"is_grasped": np.array([not rec[t] if t in (1, 2) else rec[t]])})
    assert grasp.violation is None and grasp.max_error["extra/is_grasped"] == 2
    never = DriftCheck(arr.qpos, arr.extra)
    for t in range(n + 1):  # the replay never grasps: flagged once the recording has grasped long enough
        never.update(t, arr.qpos[t], {"is_grasped": np.array([False])})
    assert rec.sum() > 3 and never.violation.startswith("drift: extra/is_grasped differs from the recording for 4")


# ---------------------------------------------------------------- plan and resume


def _files(tmp_path, sizes: dict[str, list[int]]):
    out = {}
    for subtask, counts in sizes.items():
        out[subtask] = [read_demo_file(write_mshab_file(tmp_path / subtask / f"obj{i}.h5", n, subtask=subtask,
                                                        seed=i)) for i, n in enumerate(counts)]
    return out


def test_plan_ids_offsets_and_one_file_per_shard(tmp_path):
    files = _files(tmp_path, {"pick": [3, 2], "place": [4]})
    plan = build_plan("tidy_house", "train", files, episodes=0, episodes_per_shard=2)
    eps = [e for s in plan for e in s.episodes]
    assert [e.episode_index for e in eps] == list(range(9))
    assert [e.index_offset for e in eps] == [T * i for i in range(9)]
    assert [e.subtask for e in eps] == ["pick"] * 5 + ["place"] * 4
    assert all(len({e.source for e in s.episodes}) == 1 for s in plan)
    assert [len(s.episodes) for s in plan] == [2, 1, 2, 2, 2]
    assert {s.num_shards for s in plan} == {5}
    assert plan[3].relpath == "tidy_house/data/train-00003-of-00005.parquet"


def test_plan_episode_budget_is_spread_over_files(tmp_path):
    files = _files(tmp_path, {"pick": [3, 1, 3]})
    plan = build_plan("tidy_house", "train", files, episodes=5, episodes_per_shard=8)
    per_file = [(Path(s.source).stem, len(s.episodes)) for s in plan]
    assert per_file == [("obj0", 2), ("obj1", 1), ("obj2", 2)]


def test_stored_plan_resumes_or_demands_overwrite(tmp_path):
    files = _files(tmp_path / "demos", {"pick": [3]})
    root = tmp_path / "ds"
    plan = build_plan("tidy_house", "train", files, 0, 2)
    store_plan(root, "tidy_house", "train", plan)
    store_plan(root, "tidy_house", "train", build_plan("tidy_house", "train", files, 0, 2))  # same: fine
    assert load_plan(root, "tidy_house", "train") == plan
    with pytest.raises(SgvlaError, match="--overwrite"):
        store_plan(root, "tidy_house", "train", build_plan("tidy_house", "train", files, 0, 1))
    store_plan(root, "tidy_house", "val", build_plan("tidy_house", "val", files, 0, 1))  # other split: new plan


def _outcomes(shard, kept: bool = True) -> dict:
    return {"shard": shard.relpath, "episodes": [
        {"episode_index": e.episode_index, "source": f"{e.source}:{e.traj}", "length": e.length,
         "status": "kept" if kept else "dropped"} for e in shard.episodes]}


def _parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"frame_index": list(range(rows))}), path)


def test_shard_counts_as_done_only_with_all_its_files(tmp_path):
    files = _files(tmp_path / "demos", {"pick": [1]})
    root = tmp_path / "ds"
    (shard,) = build_plan("tidy_house", "train", files, 0, 2)
    outcomes_path(root, "tidy_house", "train", 0).parent.mkdir(parents=True)
    outcomes_path(root, "tidy_house", "train", 0).write_text(json.dumps(_outcomes(shard)))
    shard_stats_path(root, "tidy_house", "train", 0).parent.mkdir(parents=True)
    shard_stats_path(root, "tidy_house", "train", 0).write_text("{}")
    assert not shard_done(root, shard)  # killed before the Parquet rename
    (root / shard.relpath).parent.mkdir(parents=True)
    (root / f".{Path(shard.relpath).name}.tmp-123").write_text("half")
    assert not shard_done(root, shard)
    _parquet(root / shard.relpath, shard.frames)
    assert shard_done(root, shard)


def test_truncated_or_foreign_shard_is_not_done(tmp_path):
    """A shard cut short (disk full, killed copy) or left by another plan is rebuilt, not trusted."""
    files = _files(tmp_path / "demos", {"pick": [2]})
    root = tmp_path / "ds"
    (shard,) = build_plan("tidy_house", "train", files, 0, 2)
    for p in (outcomes_path(root, "tidy_house", "train", 0), shard_stats_path(root, "tidy_house", "train", 0),
              root / shard.relpath):
        p.parent.mkdir(parents=True, exist_ok=True)
    outcomes_path(root, "tidy_house", "train", 0).write_text(json.dumps(_outcomes(shard)))
    shard_stats_path(root, "tidy_house", "train", 0).write_text("{}")
    path = root / shard.relpath
    _parquet(path, shard.frames)
    assert shard_done(root, shard)
    path.write_bytes(path.read_bytes()[:-20])  # the footer is gone
    assert not shard_done(root, shard)
    _parquet(path, shard.frames - 1)  # one row short of its kept episodes
    assert not shard_done(root, shard)
    _parquet(path, 0)  # all dropped: no rows is right
    outcomes_path(root, "tidy_house", "train", 0).write_text(json.dumps(_outcomes(shard, kept=False)))
    assert shard_done(root, shard)
    other = _outcomes(shard, kept=False)
    other["episodes"][0]["episode_index"] += 7  # another plan's episodes under this name
    outcomes_path(root, "tidy_house", "train", 0).write_text(json.dumps(other))
    assert not shard_done(root, shard)


def test_corrupt_plan_is_rebuilt_not_fatal(tmp_path, capsys):
    files = _files(tmp_path / "demos", {"pick": [3]})
    root = tmp_path / "ds"
    plan = build_plan("tidy_house", "train", files, 0, 2)
    store_plan(root, "tidy_house", "train", plan)
    (root / "meta" / "plan.json").write_text('{"version": 1, "plans": {"tidy')
    assert load_plan(root, "tidy_house", "train") is None
    assert "rebuilding the plan" in capsys.readouterr().err
    store_plan(root, "tidy_house", "train", plan)
    assert load_plan(root, "tidy_house", "train") == plan


# ---------------------------------------------------------------- bad input


def _gen(tmp_path, **kw):
    args = dict(task="mini_kitchen", subtask="all", episodes=0, out=tmp_path / "ds", demos=None, split="train",
                workers=1, ray_address=None, episodes_per_shard=2, overwrite=False)
    args.update(kw)
    return run_gen(**args)


def test_unknown_task_subtask_split(tmp_path):
    with pytest.raises(SgvlaError, match="unknown task 'kitchen'"):
        _gen(tmp_path, task="kitchen")
    with pytest.raises(SgvlaError, match="has no subtask open"):
        _gen(tmp_path, task="tidy_house", subtask="open")
    with pytest.raises(SgvlaError, match="has no subtask close"):
        _gen(tmp_path, task="tidy_house", subtask="pick,close")
    from sgvla.tasks import subtasks_for

    assert subtasks_for("mini_kitchen", "place, pick") == ("pick", "place")  # the task's order
    with pytest.raises(SgvlaError, match="unknown split 'test'"):
        _gen(tmp_path, split="test")
    assert not (tmp_path / "ds").exists()


def test_cli_prints_one_line_and_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["gen", "--task", "kitchen", "--out", str(tmp_path / "ds")])
    assert res.exit_code == 2
    assert "unknown task 'kitchen'" in res.output and "Traceback" not in res.output


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "thesis.tex").write_text("keep me")
    with pytest.raises(SgvlaError, match="not empty and holds no sgvla dataset"):
        _gen(tmp_path, overwrite=True)
    assert (tmp_path / "ds" / "thesis.tex").exists()


def test_missing_mshab_asset_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MS_ASSET_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SgvlaError, match=r"asset dir .*nowhere/data does not exist.*download_asset"):
        _gen(tmp_path, task="tidy_house", demos=tmp_path)
    assert not (tmp_path / "ds").exists()


def test_incomplete_mshab_assets_then_missing_package(tmp_path, monkeypatch):
    monkeypatch.setenv("MS_ASSET_DIR", str(tmp_path / "ms"))
    (tmp_path / "ms" / "data").mkdir(parents=True)
    with pytest.raises(SgvlaError, match=r"replica_cad_dataset/configs/scenes is missing.*download_asset"):
        mshab.check_ready("tidy_house", ("pick",))
    for p in mshab.required_paths("tidy_house", ("pick", "place")):
        (p.parent if p.suffix else p).mkdir(parents=True, exist_ok=True)
        if p.suffix:
            p.write_bytes(b"")
    try:
        importlib.import_module("mshab.envs")
    except ImportError:
        with pytest.raises(SgvlaError, match="needs the mshab package.*pip install"):
            mshab.check_ready("tidy_house", ("pick", "place"))
    else:  # pragma: no cover - only where mshab is installed
        mshab.check_ready("tidy_house", ("pick", "place"))


def test_builtin_task_rejects_foreign_demos(tmp_path):
    write_mshab_file(tmp_path / "demos" / "pick.h5")
    with pytest.raises(SgvlaError, match="not the mini_kitchen scene"):
        _gen(tmp_path, subtask="pick", demos=tmp_path / "demos")
    assert not (tmp_path / "ds").exists()


def test_builtin_split_seeds_never_overlap_and_gen_keeps_val_out_of_train(tmp_path):
    from sgvla.tasks import SPLIT_SIZE, split_of_seed, split_seeds

    train, val, dev = (split_seeds(name, 0, 100) for name in ("train", "val", "dev"))
    assert not set(train) & set(val) and not (set(train) | set(val)) & set(dev)
    assert {split_of_seed(s) for s in val} == {"val"} and {split_of_seed(s) for s in dev} == {"dev"}
    with pytest.raises(SgvlaError, match="leaves the val split"):
        split_seeds("val", SPLIT_SIZE - 1, 2)
    path = write_mshab_file(tmp_path / "demos" / "pick.h5", n_eps=2)
    doc = json.loads(path.with_suffix(".json").read_text())
    doc["env_info"]["env_id"] = "MiniKitchenPick-v0"
    for ep, seed in zip(doc["episodes"], (train[0], val[3]), strict=True):
        ep["reset_kwargs"] = {"seed": seed}
    path.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(SgvlaError, match=rf"traj_1 has reset seed {val[3]}, which belongs to the val split"):
        _gen(tmp_path, subtask="pick", demos=tmp_path / "demos")
    assert not (tmp_path / "ds").exists()


def test_simulator_workers_reserve_memory_and_start_only_as_many_as_fit(ray_cluster, capsys):
    import ray

    from sgvla.datagen.pipeline import WORKER_MEMORY_GIB, _pool_shape

    total = ray.cluster_resources()["memory"]
    shape = _pool_shape(0, 100, 8)  # mini_kitchen, one per core
    assert shape["memory"] == int(WORKER_MEMORY_GIB["builtin"] * 2**30)
    assert shape["n"] == min(2, int(total // shape["memory"]))
    assert _pool_shape(0, 100, 8, task="set_table")["memory"] == int(WORKER_MEMORY_GIB["mshab_cpu"] * 2**30)
    one = total / 2**30 * 0.7  # only one such worker fits
    assert _pool_shape(2, 100, 8, worker_memory=one)["n"] == 1
    assert "do not fit the cluster's" in capsys.readouterr().out
    with pytest.raises(SgvlaError, match="reserves 100000 GiB.*lower --worker-memory"):
        _pool_shape(2, 100, 8, worker_memory=100_000)
    res = CliRunner().invoke(app, ["gen", "--task", "mini_kitchen", "--out", "x", "--worker-memory", "0"])
    assert res.exit_code == 2 and "--worker-memory must be a positive" in res.output, res.output
