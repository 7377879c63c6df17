"""MS-HAB's subtask envs for closed-loop evaluation (needs the `mshab` package and its assets).

Evaluation uses the `val` task plans (`all.json`, every target) and spawn data, MS-HAB's
`{Subtask}SubtaskTrain-v0` env with its own success checks and 200-step horizon, and renders
RGB + depth for the policy (MS-HAB's own `make_env` drops RGB, so it is not used here).
"""

from __future__ import annotations

from sgvla.datagen.mshab import _download_hint, check_ready, rearrange_dir
from sgvla.errors import SgvlaError

EVAL_SPLIT = "val"
HORIZON = 200


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
    """One `{Subtask}SubtaskTrain-v0` env over the val plans (a single env on CPU, for Ray workers)."""
    import gymnasium as gym
    import mshab.envs  # noqa: F401
    from mshab.envs.planner import plan_data_from_file

    plans, spawn = _paths(task, subtask)
    plan_data = plan_data_from_file(plans)
    return gym.make(
        f"{subtask.capitalize()}SubtaskTrain-v0", num_envs=1, obs_mode=obs_mode, robot_uids="fetch",
        control_mode="pd_joint_delta_pos", reward_mode="normalized_dense", max_episode_steps=HORIZON,
        task_plans=plan_data.plans, scene_builder_cls=plan_data.dataset, spawn_data_fp=str(spawn),
        require_build_configs_repeated_equally_across_envs=False,
    )
