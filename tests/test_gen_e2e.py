"""`sgvla gen` end to end on the built-in scene: expert demos made on the spot, Ray replay, the Hugging
Face dataset it writes, and crash safety (kill -9 of a worker or of the driver, a bad demo file)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

from sgvla import provenance
from sgvla.datagen.pipeline import DEMOS_DIR, run_gen
from sgvla.dataset.layout import MANIFEST_PATH, find_shards

pytestmark = pytest.mark.slow
TASK = "mini_kitchen"
EPISODES = 2


def _gen(out: Path, **kw) -> bool:
    args = dict(task=TASK, subtask="all", episodes=EPISODES, out=out, demos=None, split="train", workers=2,
                ray_address=None, episodes_per_shard=1, overwrite=False)
    args.update(kw)
    return run_gen(**args)


@pytest.fixture(scope="module")
def built(ray_cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "ds"
    assert _gen(out, episodes_per_shard=2)  # one shard per subtask: whole multi-episode shards
    return out


def _load(root: Path, **kw):
    from datasets import load_dataset

    return load_dataset(str(root), TASK, split="train", **kw)


def _episodes(ds) -> dict[str, dict[str, np.ndarray]]:
    """source -> that episode's columns (non-image), rows in frame order."""
    cols = ds.remove_columns([c for c in ds.column_names if c.endswith(("_rgb", "_depth", "_mask"))])
    out: dict[str, dict] = {}
    for row in cols:
        ep = out.setdefault(row["source"], {k: [] for k in row})
        for k, v in row.items():
            ep[k].append(v)
    return {s: {k: np.asarray(v) for k, v in ep.items()} for s, ep in out.items()}


def _demo_h5(root: Path, source: str) -> tuple[Path, str]:
    name, traj = source.split(":")
    return root / DEMOS_DIR / name, traj


def test_dataset_loads_with_typed_features_and_whole_episodes(built):
    from datasets import ClassLabel, Image, List

    ds = _load(built)
    assert isinstance(ds.features["head_rgb"], Image) and isinstance(ds.features["hand_mask"], Image)
    assert isinstance(ds.features["subtask"], ClassLabel)
    assert isinstance(ds.features["qpos"], List) and ds.features["qpos"].length == 12
    row = ds[0]
    assert np.asarray(row["head_rgb"]).shape == (128, 128, 3)
    assert np.asarray(row["head_depth"]).dtype == np.uint16
    assert np.asarray(row["hand_mask"]).dtype == bool
    eps = _episodes(ds)
    names = ds.features["subtask"].names
    subtasks = {names[int(e["subtask"][0])] for e in eps.values()}
    assert subtasks == {"pick", "place", "open", "close"}
    assert sorted(int(e["episode_index"][0]) for e in eps.values()) == list(range(len(eps)))
    indexes = np.sort(np.concatenate([e["index"] for e in eps.values()]))
    assert len(np.unique(indexes)) == len(ds)
    for e in eps.values():
        assert (e["frame_index"] == np.arange(len(e["frame_index"]))).all()
        assert (e["index"] == e["index"][0] + e["frame_index"]).all()
        np.testing.assert_allclose(e["timestamp"], e["frame_index"] / 20, atol=1e-6)
        assert len(set(e["instruction"])) == 1 and e["instruction"][0]
    manifest = json.loads((built / MANIFEST_PATH).read_text())
    assert len(manifest["kept"]) == len(eps) and not manifest["failed"]
    assert manifest["software"] == provenance.software()  # which simulator and libraries recorded it
    assert (built / "README.md").is_file() and (built / "meta" / "stats.json").is_file()


def test_card_and_manifest_publish_no_absolute_paths(built):
    """The folder's own location and the demos' absolute paths stay on the machine that made it."""
    for name in ("README.md", "meta/manifest.json"):
        text = (built / name).read_text()
        assert str(built.parent) not in text and "/tmp/" not in text, name
    assert "gen.h5" not in text and "pick.h5:traj_0" in (built / "meta" / "manifest.json").read_text()


def test_validate_accepts_the_folder(built):
    from sgvla.dataset.validate import validate_dataset

    assert validate_dataset(built) == []


def test_rows_match_the_demonstrations(built):
    """qpos and actions are the demo's; the replay reproduces each demo's success."""
    for source, e in _episodes(_load(built)).items():
        h5, traj = _demo_h5(built, source)
        with h5py.File(h5) as f:
            T = f[traj]["actions"].shape[0]
            assert len(e["qpos"]) == T
            np.testing.assert_allclose(e["qpos"], f[traj]["obs/agent/qpos"][:T], atol=1e-3)
            np.testing.assert_allclose(e["action"], f[traj]["actions"][()], atol=0)
        assert e["success"][-1]


def test_obj_pose_is_the_world_pose_in_the_base_frame(built):
    from scipy.spatial.transform import Rotation

    for e in _episodes(_load(built)).values():
        base, world, rel = e["base_pose"].astype(np.float64), e["obj_pose_world"], e["obj_pose"]
        r_base = Rotation.from_quat(base[:, [4, 5, 6, 3]])  # scipy: xyzw
        r_obj = Rotation.from_quat(world[:, [4, 5, 6, 3]])
        np.testing.assert_allclose(rel[:, :3], r_base.inv().apply(world[:, :3] - base[:, :3]), atol=1e-4)
        expect = (r_base.inv() * r_obj).as_quat()[:, [3, 0, 1, 2]]
        sign = np.sign(np.sum(expect * rel[:, 3:], axis=1, keepdims=True))
        np.testing.assert_allclose(rel[:, 3:], sign * expect, atol=1e-4)


def test_is_grasped_becomes_true_during_pick_and_false_after_place(built):
    eps = _episodes(_load(built))
    picks = [e for e in eps.values() if int(e["subtask"][0]) == 0]
    places = [e for e in eps.values() if int(e["subtask"][0]) == 1]
    assert picks and places
    for e in picks:
        assert not e["is_grasped"][0] and e["is_grasped"].any() and e["is_grasped"][-1]
    for e in places:  # place starts with the object in the gripper and ends with it released
        # (frame 0 is the env's reset report, made before any physics step has found the contacts)
        assert e["is_grasped"][:2].any() and not e["is_grasped"][-1]


def _project(c2w_gl: np.ndarray, K: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """World point -> (u, v, depth in mm) for an OpenGL cam2world and an OpenCV intrinsic."""
    pc = np.linalg.inv(c2w_gl) @ np.r_[p, 1.0]
    x, y, z = pc[0], -pc[1], -pc[2]
    return K[0, 0] * x / z + K[0, 2], K[1, 1] * y / z + K[1, 2], z * 1000


class _RecordedCameras:
    """The cameras' parameters at a demo's frame, from its recorded env state (demos carry camera
    parameters only with --images, which `sgvla gen` does not record)."""

    def __init__(self):
        self.envs = {}
        self.episode: tuple[Path, str] | None = None  # the one whose states are loaded and reset
        self.states: list[dict] = []

    def at(self, h5: Path, traj: str, t: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from sgvla.envs import make_env

        subtask = h5.stem
        if subtask not in self.envs:
            self.envs[subtask] = make_env(TASK, subtask, obs_mode="state_dict")
        env = self.envs[subtask].unwrapped
        if self.episode != (h5, traj):  # rows come episode by episode: read and reset once each
            self._load(env, h5, traj)
        env.set_state_dict(self.states[t])
        env.scene.update_render()
        par = env.get_sensor_params()
        return {cam: (par[f"fetch_{cam}"]["cam2world_gl"][0].numpy(), par[f"fetch_{cam}"]["intrinsic_cv"][0].numpy())
                for cam in ("head", "hand")}

    def _load(self, env, h5: Path, traj: str) -> None:
        from mani_skill.trajectory.utils import dict_to_list_of_dicts

        from sgvla.datagen.sources import read_demo_file, read_episode

        episode = next(e for e in read_demo_file(h5).episodes if e.traj == traj)
        env.reset(**episode.reset_kwargs)
        self.states = dict_to_list_of_dicts(read_episode(h5, traj).env_states)
        self.episode = (h5, traj)

    def close(self):
        for env in self.envs.values():
            env.close()


def test_masks_cover_the_target_when_in_view_and_are_empty_when_not(built):
    """Ground truth from the demo's recorded states: project the target's centre into each camera."""
    ds = _load(built)
    names = ds.features["subtask"].names
    seen = {"in": 0, "out": 0}
    cameras = _RecordedCameras()
    try:
        for i in range(0, len(ds), 3):
            row = ds[i]
            if names[row["subtask"]] not in ("pick", "place"):
                continue
            t = row["frame_index"]
            params = cameras.at(*_demo_h5(built, row["source"]), t)
            for cam in ("head", "hand"):
                u, v, z = _project(*params[cam], np.asarray(row["obj_pose_world"][:3]))
                mask = np.asarray(row[f"{cam}_mask"])
                depth = np.asarray(row[f"{cam}_depth"]).astype(np.int64)
                inside = z > 50 and 2 <= u < 126 and 2 <= v < 126
                if inside and depth[int(v), int(u)] > z - 120:  # centre visible: nothing in front of it
                    assert mask.sum() > 0, (row["source"], t, cam)
                    ys, xs = np.nonzero(mask)
                    assert np.hypot(xs.mean() - u, ys.mean() - v) < 25
                    seen["in"] += 1
                elif z < 0 or not (-40 <= u < 168 and -40 <= v < 168):  # well outside the view
                    assert mask.sum() == 0, (row["source"], t, cam)
                    seen["out"] += 1
    finally:
        cameras.close()
    print(f"mask checks: {seen}")
    assert seen["in"] > 10


def test_rerun_resumes_with_nothing_to_redo(built):
    # Nothing is rewritten (timings belong in bench/, not here).
    before = {s.path: s.path.stat().st_mtime_ns for s in find_shards(built)}
    assert _gen(built, episodes_per_shard=2)
    assert {s.path: s.path.stat().st_mtime_ns for s in find_shards(built)} == before


def test_truncated_shard_and_corrupt_plan_are_rebuilt(built, capsys):
    """A shard cut short (disk full, killed copy) and an unreadable plan: the same command rebuilds
    exactly that shard, identical to before, and touches no other."""
    import pyarrow.parquet as pq

    from sgvla.dataset.validate import validate_dataset

    shards = find_shards(built)
    victim = shards[0].path
    cols = ["episode_index", "frame_index", "qpos", "action"]
    original = pq.read_table(victim, columns=cols)
    others = {s.path: s.path.stat().st_mtime_ns for s in shards[1:]}
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (built / "meta" / "plan.json").write_text('{"version": 1, "pla')
    assert _gen(built, episodes_per_shard=2)
    err = capsys.readouterr().err
    assert "rebuilding the plan" in err and f"{victim} is incomplete" in err
    assert pq.read_table(victim, columns=cols).equals(original)
    assert {p: p.stat().st_mtime_ns for p in others} == others
    assert validate_dataset(built) == []


# ---------------------------------------------------------------- crashes


def _cli(out: Path, demos: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sgvla.cli", "gen", "--task", TASK, "--subtask", "pick", "--out", str(out),
            "--demos", str(demos), "--episodes-per-shard", "1", *extra]


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300):
    end = time.time() + timeout
    while time.time() < end:
        found = cond()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"sgvla gen exited ({proc.returncode}) before the moment to kill it")
        time.sleep(0.1)
    pytest.fail("timed out waiting for the moment to kill")


def _end_session(proc: subprocess.Popen) -> None:
    """End what this test started: the driver (a session leader) and any of its session's processes
    (Ray's) that outlived it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and os.getsid(p.pid) == proc.pid:
                p.kill()
        except (OSError, psutil.Error):
            pass


def _check_pick_dataset(out: Path, reference: Path) -> None:
    """Every planned episode exactly once, identical to the uninterrupted run's rows."""
    ds = _load(out)
    eps = _episodes(ds)
    assert sorted(eps) == [f"pick.h5:traj_{i}" for i in range(EPISODES)]
    assert sum(len(e["frame_index"]) for e in eps.values()) == len(ds)
    ref = _episodes(_load(reference))
    for source, e in eps.items():
        assert (e["frame_index"] == np.arange(len(e["frame_index"]))).all()
        np.testing.assert_array_equal(e["qpos"], ref[source]["qpos"])
        np.testing.assert_array_equal(e["is_grasped"], ref[source]["is_grasped"])


def test_kill_9_of_a_worker_then_of_the_driver_loses_and_duplicates_nothing(built, tmp_path):
    """One worker, two shards: kill -9 the worker inside shard 0 (Ray restarts it, the shard is
    retried), then kill -9 the driver once shard 0 is on disk; re-running finishes the rest."""
    out = tmp_path / "ds"
    demos = built / DEMOS_DIR
    log = tmp_path / "gen.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_cli(out, demos, "--workers", "1"), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def busy_worker():
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "SimWorker.run_shard" in " ".join(p.cmdline()):
                    return p
            except psutil.Error:
                pass
        return None

    try:
        worker = _wait_for(busy_worker, proc)  # its title names run_shard: it is inside the shard
        worker.kill()
        _wait_for(lambda: list((out / TASK / "data").glob("train-*.parquet")), proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _end_session(proc)
    assert "worker died on shard" in log.read_text()
    assert len(find_shards(out)) < EPISODES  # the driver really was killed mid-run
    assert _gen(out, subtask="pick", demos=demos)
    _check_pick_dataset(out, built)


def test_a_bad_trajectory_fails_only_its_shard_and_is_named(built, tmp_path, capsys):
    demos = tmp_path / "demos"
    demos.mkdir()
    for ext in (".h5", ".json"):
        shutil.copy(built / DEMOS_DIR / f"place{ext}", demos / f"place{ext}")
    with h5py.File(demos / "place.h5", "a") as f:  # a state vector of the wrong width
        fetch = f["traj_1/env_states/articulations/fetch"][()]
        del f["traj_1/env_states/articulations/fetch"]
        f["traj_1/env_states/articulations/fetch"] = fetch[:, :-3]
    out = tmp_path / "ds"
    assert not _gen(out, subtask="place", demos=demos)
    manifest = json.loads((out / MANIFEST_PATH).read_text())
    assert [e["source"].endswith("place.h5:traj_0") for e in manifest["kept"]] == [True]
    assert [e["source"].endswith("place.h5:traj_1") for e in manifest["failed"]] == [True]
    assert "place.h5" in capsys.readouterr().err
    ds = _load(out)
    assert set(ds["source"]) == {"place.h5:traj_0"}
