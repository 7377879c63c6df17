"""Replay and label extraction on a real simulator: ManiSkill's PickCube-v1 with the Fetch robot,
recorded by ManiSkill's own RecordEpisode (with env states), replayed by `sgvla.datagen`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from sgvla.datagen.labels import read_labels
from sgvla.datagen.plan import build_plan
from sgvla.datagen.replay import Replayer
from sgvla.datagen.sources import read_demo_file
from sgvla.dataset.shards import rows_to_table

STEPS = 16


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401
    from mani_skill.utils.wrappers.record import RecordEpisode

    out = tmp_path_factory.mktemp("pickcube")
    env = gym.make("PickCube-v1", robot_uids="fetch", obs_mode="state_dict", control_mode="pd_joint_delta_pos")
    env = RecordEpisode(env, str(out), trajectory_name="pick", save_video=False, record_env_state=True,
                        record_reward=True)
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        env.reset(seed=seed)
        for _ in range(STEPS):
            a = rng.uniform(-1, 1, 13).astype(np.float32)
            a[-2:] *= 0.5  # drive the base a little
            env.step(a)
    env.close()
    return out


@pytest.fixture(scope="module")
def replayer(demo_dir):
    rep = Replayer("mini_kitchen")
    env = rep.env_for(read_demo_file(demo_dir / "pick.h5"))
    env.unwrapped.label_target = env.unwrapped.cube  # PickCube names its target `cube`
    yield rep
    rep.close()


@pytest.fixture(scope="module")
def replayed(replayer, demo_dir):
    return _replay(replayer, demo_dir / "pick.h5")


def _replay(replayer, h5: Path):
    demo = read_demo_file(h5)
    (shard,) = build_plan("mini_kitchen", "train", {"pick": [demo]}, 0, 8)
    return demo, replayer.replay(demo, list(shard.episodes))


def _quat_mul(a, b):
    w1, x1, y1, z1 = a.T
    w2, x2, y2, z2 = b.T
    return np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], axis=1)


def _rotate(q, v):
    qv = np.concatenate([np.zeros((len(v), 1)), v], axis=1)
    conj = q * np.array([1, -1, -1, -1])
    return _quat_mul(_quat_mul(q, qv), conj)[:, 1:]


def test_env_state_replay_reproduces_the_recording(replayed, demo_dir):
    demo, results = replayed
    assert demo.kind == "env_states"
    assert [r.status for r in results] == ["kept", "kept"]
    with h5py.File(demo_dir / "pick.h5") as h5:
        for r in results:
            rows = r.rows
            g = h5[r.episode.traj]
            assert rows["frame_index"] == list(range(STEPS))
            assert rows["index"] == [r.episode.index_offset + t for t in range(STEPS)]
            # the 12 non-base joints equal the recorded ones, frame by frame
            np.testing.assert_allclose(np.array(rows["qpos"]), g["obs/agent/qpos"][:STEPS, 3:], atol=1e-3)
            # the target's world pose is the recorded cube state
            np.testing.assert_allclose(np.array(rows["obj_pose_world"]),
                                       g["env_states/actors/cube"][:STEPS, :7], atol=1e-3)
            np.testing.assert_allclose(np.array(rows["action"]), g["actions"][()], atol=0)
            np.testing.assert_allclose(np.array(rows["reward"]), g["rewards"][()], atol=1e-3)
            assert rows["success"] == g["success"][()].tolist()
            assert rows["instruction"][0] == "pick up the cube" and rows["target"][0] == "cube"
            assert rows["source"][0] == f"pick.h5:{r.episode.traj}"
            assert r.drift["qpos"] < 1e-3
    rows_to_table(results[0].rows)  # every schema field is there with the right type


def test_obj_pose_is_world_pose_in_the_base_frame(replayed):
    _, results = replayed
    rows = results[1].rows
    base, world, rel = (np.array(rows[k], dtype=np.float64) for k in ("base_pose", "obj_pose_world", "obj_pose"))
    inv_q = base[:, 3:] * np.array([1, -1, -1, -1])
    expect_p = _rotate(inv_q, world[:, :3] - base[:, :3])
    expect_q = _quat_mul(inv_q, world[:, 3:])
    np.testing.assert_allclose(rel[:, :3], expect_p, atol=1e-4)
    sign = np.sign(np.sum(rel[:, 3:] * expect_q, axis=1, keepdims=True))
    np.testing.assert_allclose(rel[:, 3:], sign * expect_q, atol=1e-4)
    assert np.ptp(base[:, 0]) + np.ptp(base[:, 1]) > 1e-3  # the base did move


def test_mask_covers_the_target_in_view_and_is_empty_out_of_view(replayer, demo_dir):
    import sapien

    env = replayer.env_for(read_demo_file(demo_dir / "pick.h5"))
    u = env.unwrapped
    obs, info = env.reset(seed=3)
    for cam, uid in (("head", "fetch_head"), ("hand", "fetch_hand")):
        c2w = obs["sensor_param"][uid]["cam2world_gl"][0].numpy()
        forward, origin = -c2w[:3, 2], c2w[:3, 3]
        # 10 cm in front of the lens: nearer than the robot's own arm, which fills much of the view
        u.cube.set_pose(sapien.Pose(p=origin + 0.1 * forward))
        obs = u.get_obs()
        lab = read_labels(env, obs, info, u.cube)
        mask, depth = lab.mask[cam][0], lab.depth[cam][0]
        assert mask.sum() >= 20, cam
        assert 70 <= np.median(depth[mask]) <= 100  # the masked pixels are the cube's (2 cm half size)
        assert not mask[depth > 150].any()
        u.cube.set_pose(sapien.Pose(p=origin - 0.4 * forward))  # behind the camera
        obs = u.get_obs()
        assert read_labels(env, obs, info, u.cube).mask[cam][0].sum() == 0, cam


def _without_states(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.with_suffix(".json"), dst / "pick.json")
    with h5py.File(src) as a, h5py.File(dst / "pick.h5", "w") as b:
        for traj in a:
            for key in a[traj]:
                if key != "env_states":
                    a.copy(a[traj][key], b, name=f"{traj}/{key}")
    return dst / "pick.h5"


def test_open_loop_replay_keeps_a_faithful_episode_and_drops_a_drifting_one(replayer, demo_dir, tmp_path):
    h5 = _without_states(demo_dir / "pick.h5", tmp_path)
    with h5py.File(h5, "a") as f:
        f["traj_1/obs/agent/qpos"][7:, 5] += 0.5  # the recording says the arm went elsewhere
    demo, results = _replay(replayer, h5)
    assert demo.kind == "actions"
    assert results[0].status == "kept" and results[0].drift["qpos"] < 0.05
    assert results[1].status == "dropped"
    assert results[1].reason.startswith("drift: qpos off by") and results[1].reason.endswith("at step 7")
    assert results[1].rows is None


def test_episode_whose_success_is_not_reproduced_is_dropped(replayer, demo_dir, tmp_path):
    for ext in (".h5", ".json"):
        shutil.copy(demo_dir / f"pick{ext}", tmp_path / f"pick{ext}")
    doc = json.loads((tmp_path / "pick.json").read_text())
    doc["episodes"][0]["success"] = True  # random actions never solve PickCube
    (tmp_path / "pick.json").write_text(json.dumps(doc))
    _, results = _replay(replayer, tmp_path / "pick.h5")
    assert [r.status for r in results] == ["dropped", "kept"]
    assert results[0].reason == "replay did not reproduce the recorded success"
