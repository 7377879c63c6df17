"""The MS-HAB path against MS-HAB's documented interface (no assets here): download commands,
the required assets, and the evaluation prompt equal to the training prompt."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from sgvla.datagen import mshab
from sgvla.datagen.sources import read_demo_file
from sgvla.errors import SgvlaError
from sgvla.instructions import episode_text, template_instruction
from tests.test_gen_inputs import write_mshab_file


def test_download_commands_are_one_asset_per_call_in_the_safe_order(tmp_path, monkeypatch):
    monkeypatch.setenv("MS_ASSET_DIR", str(tmp_path / "ms"))
    cmds = mshab.download_commands()
    assert [c.split()[-1] for c in cmds] == ["ycb", "ReplicaCAD", "ReplicaCADRearrange"]
    assert all(re.fullmatch(r"MS_ASSET_DIR=\S+ python -m mani_skill\.utils\.download_asset \w+", c) for c in cmds)
    with pytest.raises(SgvlaError) as e:  # what a user with no assets is told
        mshab.check_ready("set_table", ("open",))
    assert " && ".join(cmds) in str(e.value) and "Remove?" in str(e.value)


def test_ycb_is_required_for_open_and_close_too(tmp_path, monkeypatch):
    monkeypatch.setenv("MS_ASSET_DIR", str(tmp_path / "ms"))
    for subtasks in (("open",), ("close",), ("pick",)):
        assert any(p.name == "mani_skill2_ycb" for p in mshab.required_paths("set_table", subtasks))


def _mshab_env(subtask: str, original) -> SimpleNamespace:
    """An env shaped like MS-HAB's SubtaskTrain envs after reset: a merged task plan whose object is
    renamed `obj_0`, the original plans in `base_task_plans`, no `instruction` attribute."""
    merged = SimpleNamespace(type=subtask, obj_id="obj_0", composite_subtask_uids=[original.uid])
    plans = {("nav-1", original.uid): SimpleNamespace(subtasks=[SimpleNamespace(uid="nav-1", type="navigate"),
                                                                original])}
    return SimpleNamespace(unwrapped=SimpleNamespace(task_plan=[merged], base_task_plans=plans))


@pytest.mark.parametrize("subtask, original, file_stem, text", [
    ("pick", SimpleNamespace(uid="u7", type="pick", obj_id="024_bowl-2"), "024_bowl", "pick up the bowl"),
    ("place", SimpleNamespace(uid="u8", type="place", obj_id="013_apple-0"), "013_apple", "place the apple"),
    ("open", SimpleNamespace(uid="u9", type="open", obj_id="kitchen_counter-0", articulation_type="kitchen_counter"),
     "kitchen_counter", "open the drawer"),
    ("close", SimpleNamespace(uid="u3", type="close", articulation_type="fridge"), "fridge", "close the fridge"),
])
def test_evaluation_prompt_is_the_training_prompt(subtask, original, file_stem, text):
    env = _mshab_env(subtask, original)
    trained = template_instruction(subtask, file_stem)  # what `sgvla gen` wrote for <file_stem>.h5
    assert episode_text(env, subtask) == (trained, file_stem)
    assert trained == text


def test_model_policy_resets_on_an_env_without_instruction(tmp_path):
    """MS-HAB envs have no `instruction` attribute: reading it crashed the first episode."""
    from sgvla.eval.policies import ModelPolicy
    from tests.test_hardening import _saved_tiny_model

    policy = ModelPolicy(_saved_tiny_model(tmp_path), mode="tokens")
    env = _mshab_env("pick", SimpleNamespace(uid="u1", type="pick", obj_id="024_bowl-0"))
    policy.reset(env, "pick", 0)
    assert policy.episode.instruction == "pick up the bowl"


class _FakeMshabEnv(gym.Env):
    """The reset/step surface of MS-HAB's SubtaskTrain env that evaluation relies on."""

    def __init__(self):
        self.build_config_idx_to_task_plans = {9: ["a", "b", "c"], 3: ["d", "e"], 7: ["f"]}
        self.build_config_idxs = [3]
        self.resets, self.actions = [], []
        self.action_space = gym.spaces.Box(-1, 1, (13,), np.float32)
        self.observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.resets.append((seed, options))
        self.build_config_idxs = options["build_config_idxs"]
        return 0, {}

    def step(self, action):
        self.actions.append(action)
        return 0, 0.0, False, False, {}


def test_val_episodes_cover_the_scenes_evenly_and_hold_the_head_still():
    from sgvla.eval.mshab_env import _val_episodes

    fake = _FakeMshabEnv()
    env = _val_episodes(fake)
    for seed in range(7):
        env.reset(seed=seed)
    picked = [(o["build_config_idxs"][0], int(o["task_plan_idxs"][0])) for _, o in fake.resets]
    assert picked == [(3, 0), (7, 0), (9, 0), (3, 1), (7, 0), (9, 1), (3, 0)]
    assert [o["reconfigure"] for _, o in fake.resets] == [False, True, True, True, True, True, True]
    env.reset(seed=1)
    assert fake.resets[-1][1]["task_plan_idxs"].tolist() == [0] and fake.resets[-1][1]["build_config_idxs"] == [7]
    env.step(np.ones(13, np.float32))
    assert fake.actions[-1][8:10].tolist() == [0, 0] and fake.actions[-1][[0, 7, 10, 11, 12]].tolist() == [1] * 5


def test_open_close_target_pose_is_the_handle_point_not_the_link_origin():
    """MS-HAB's fridge door link frame sits near the hinge: the label is the handle point MS-HAB's
    own checks use (`handle_world_poses`), while envs without it (ours) keep the target's pose."""
    from sgvla.datagen.labels import target_pose

    link = SimpleNamespace(pose="link origin")
    mshab_env = SimpleNamespace(unwrapped=SimpleNamespace(handle_world_poses=["handle point"]))
    ours = SimpleNamespace(unwrapped=SimpleNamespace())
    pick = SimpleNamespace(unwrapped=SimpleNamespace(handle_world_poses=[None]))  # not an articulation subtask
    assert target_pose(mshab_env, link) == "handle point"
    assert target_pose(ours, link) == target_pose(pick, link) == "link origin"


def test_workers_get_the_drivers_asset_dir_and_check_it_themselves(tmp_path, monkeypatch):
    import socket

    from sgvla.datagen.plan import PlannedEpisode, ShardPlan
    from sgvla.datagen.worker import SimWorker

    monkeypatch.setenv("MS_ASSET_DIR", str(tmp_path / "ms"))
    assert mshab.worker_runtime_env() == {"env_vars": {"MS_ASSET_DIR": str(tmp_path / "ms")}}
    shard = ShardPlan("set_table", "train", 0, 1, (PlannedEpisode(0, "open", "/x/fridge.h5", "traj_0", 5, 0),))
    with pytest.raises(SgvlaError, match=f"on node {socket.gethostname()}: MS-HAB asset dir .*does not exist"):
        SimWorker("set_table", str(tmp_path / "ds")).run_shard(shard.to_json(), "set_table", "train", 1, 1)


def test_a_demo_of_another_task_plan_release_is_named(tmp_path):
    """Published JSONs carry `subtask_uid`; a rebuilt plan with another uid is a version mismatch."""

    path = write_mshab_file(tmp_path / "pick" / "024_bowl.h5", n_eps=2)
    doc = json.loads(path.with_suffix(".json").read_text())
    for i, ep in enumerate(doc["episodes"]):
        ep["subtask_uid"] = f"pick-{i}"
    path.with_suffix(".json").write_text(json.dumps(doc))
    demo = read_demo_file(path, "pick")
    assert [e.subtask_uid for e in demo.episodes] == ["pick-0", "pick-1"]
    env = SimpleNamespace(task_plan=[SimpleNamespace(composite_subtask_uids=["pick-0", "pick-7"])])
    mshab.check_subtask_uids(env, demo, [demo.episodes[0]])  # matches
    with pytest.raises(SgvlaError, match="recorded on subtask pick-1 but its task plan rebuilds subtask\\(s\\) pick-7"):
        mshab.check_subtask_uids(env, demo, list(demo.episodes))


def test_shards_group_episodes_by_scene_and_envs_do_not_rebuild_every_reset(tmp_path):
    from sgvla.datagen.plan import build_plan

    path = write_mshab_file(tmp_path / "pick" / "024_bowl.h5", n_eps=4)  # build configs 3, 4, 3, 4
    demo = read_demo_file(path, "pick")
    assert [e.reset_idxs["build_config_idx"] for e in demo.episodes] == [3, 4, 3, 4]
    plan = build_plan("tidy_house", "train", {"pick": [demo]}, 0, 2)
    assert [[e.traj for e in s.episodes] for s in plan] == [["traj_0", "traj_2"], ["traj_1", "traj_3"]]
    assert [e.episode_index for s in plan for e in s.episodes] == [0, 1, 2, 3]  # ids stay dense


def test_replay_and_eval_envs_are_built_without_a_rebuild_per_reset(tmp_path, monkeypatch):
    """ManiSkill's SceneManipulationEnv rebuilds the apartment on every reset at num_envs=1 unless
    reconfiguration_freq=0 is passed: both env builders must pass it (mshab is faked: not installed)."""
    import sys
    import types

    planner = types.ModuleType("mshab.envs.planner")
    planner.plan_data_from_file = lambda path: SimpleNamespace(plans=["plan"], dataset="ReplicaCADSetTableVal")
    for name, mod in (("mshab", types.ModuleType("mshab")), ("mshab.envs", types.ModuleType("mshab.envs")),
                      ("mshab.envs.planner", planner)):
        monkeypatch.setitem(sys.modules, name, mod)
    demo = read_demo_file(write_mshab_file(tmp_path / "pick" / "024_bowl.h5"), "pick")
    assert mshab.env_kwargs("tidy_house", demo)["reconfiguration_freq"] == 0
    made = {}
    monkeypatch.setattr(gym, "make", lambda env_id, **kw: made.update(kw) or _FakeMshabEnv())
    from sgvla.eval.mshab_env import make_mshab_env

    make_mshab_env("set_table", "open", obs_mode="rgb+depth")
    assert made["reconfiguration_freq"] == 0 and made["num_envs"] == 1


def test_gpu_eval_workers_on_a_cluster_without_gpus_is_one_error(tmp_path):
    from typer.testing import CliRunner

    from sgvla.cli import app

    res = CliRunner().invoke(app, ["eval", "--model", "expert", "--subtask", "pick", "--episodes", "1",
                                   "--gpus-per-worker", "1", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2 and "--gpus-per-worker 1 but the Ray cluster has 0 GPUs" in res.output, res.output


def test_model_policy_runs_fp32_on_cpu_and_would_autocast_bf16_on_a_gpu(tmp_path):
    import torch

    from sgvla.eval.policies import ModelPolicy
    from tests.test_hardening import _saved_tiny_model

    policy = ModelPolicy(_saved_tiny_model(tmp_path), mode="tokens")
    assert policy.device == "cpu" and next(policy.model.parameters()).dtype == torch.float32
    policy.device = "cuda:0"  # what a GPU worker holds: the query runs under bf16 autocast
    ctx = policy._precision()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
