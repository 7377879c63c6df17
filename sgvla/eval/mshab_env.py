"""MS-HAB's subtask envs for closed-loop evaluation (needs the `mshab` package and its assets).

Evaluation uses the `val` task plans (`all.json`, every target) and spawn data, MS-HAB's
`{Subtask}SubtaskTrain-v0` env with its own success checks and 200-step horizon, and renders
RGB + depth for the policy (MS-HAB's own `make_env` drops RGB, so it is not used here).
"""

from __future__ import annotations

from sgvla.datagen.mshab import NO_AUTO_RECONFIGURE, _download_hint, check_ready, rearrange_dir
from sgvla.errors import SgvlaError

EVAL_SPLIT = "val"
HORIZON = 200
#: Head pan and tilt in Fetch's 13-D action (arm 7, gripper 1, head pan, head tilt, torso, base 2):
#: MS-HAB evaluates with the head held still (its `FetchActionWrapper(stationary_head=True)`).
HEAD_ACTION = slice(8, 10)


def val_episode_options(unwrapped, seed: int) -> dict:
    """Reset options that put episode `seed` in one val scene and one of its task plans: consecutive
    seeds cycle through the scenes (build configs), and within a scene through its plans, so N
    episodes cover the scenes evenly and the same seed always gives the same episode."""
    import torch

    plans = unwrapped.build_config_idx_to_task_plans
    scenes = sorted(plans)
    bci = scenes[seed % len(scenes)]
    tpi = (seed // len(scenes)) % len(plans[bci])
    return dict(reconfigure=list(getattr(unwrapped, "build_config_idxs", [])) != [bci], build_config_idxs=[bci],
                task_plan_idxs=torch.tensor([tpi]))


def _val_episodes(env):
    """Wrap an MS-HAB env: seeds choose the val scene and plan (`val_episode_options`), head still."""
    import gymnasium as gym
    import numpy as np

    class ValEpisodes(gym.Wrapper):
        def reset(self, *, seed=None, options=None):
            if seed is not None and options is None:
                options = val_episode_options(self.env.unwrapped, int(seed))
            return self.env.reset(seed=seed, options=options)

        def step(self, action):
            action = np.array(action, dtype=np.float32, copy=True)
            action[..., HEAD_ACTION] = 0.0
            return self.env.step(action)

    return ValEpisodes(env)


def _paths(task: str, subtask: str):
    plans = rearrange_dir() / "task_plans" / task / subtask / EVAL_SPLIT / "all.json"
    spawn = rearrange_dir() / "spawn_data" / task / subtask / EVAL_SPLIT / "spawn_data.pt"
    return plans, spawn


def require_mshab(task: str, subtasks: tuple[str, ...]) -> None:
    """Clear error, before any rollout, when mshab or an asset the val envs read is missing."""
    check_ready(task, subtasks, split=EVAL_SPLIT)
    for sub in subtasks:
        plans, _ = _paths(task, sub)
        if not plans.is_file():
            raise SgvlaError(f"evaluating --task {task} needs MS-HAB task plans {plans}: download them with "
                             f"`{_download_hint()}`")


def make_mshab_env(task: str, subtask: str, obs_mode: str):
    """One `{Subtask}SubtaskTrain-v0` env over the val plans (a single env on CPU, for Ray workers),
    its episodes spread over the val scenes by seed and its head held still."""
    import gymnasium as gym
    import mshab.envs  # noqa: F401
    from mshab.envs.planner import plan_data_from_file

    plans, spawn = _paths(task, subtask)
    plan_data = plan_data_from_file(plans)
    return _val_episodes(gym.make(
        f"{subtask.capitalize()}SubtaskTrain-v0", num_envs=1, obs_mode=obs_mode, robot_uids="fetch",
        control_mode="pd_joint_delta_pos", reward_mode="normalized_dense", max_episode_steps=HORIZON,
        task_plans=plan_data.plans, scene_builder_cls=plan_data.dataset, spawn_data_fp=str(spawn),
        require_build_configs_repeated_equally_across_envs=False, **NO_AUTO_RECONFIGURE,
    ))
