"""Building `mini_kitchen` envs, with a clear error when the machine cannot render.

`make_env` holds the defaults that make recorded files replayable (CPU physics, MS-HAB's control
mode); demos, evaluation and the speed benchmark build mini_kitchen envs through it. Dataset
generation rebuilds an env from a demo file's own id and kwargs instead, so the translation of
SAPIEN's low-level Vulkan errors sits in `gym_make_checked`, which both go through.
"""

from __future__ import annotations

import gymnasium as gym

from sgvla.errors import SgvlaError
from sgvla.tasks import BUILTIN_TASK, TASK_SUBTASKS, subtasks_for

DEFAULT_OBS_MODE = "rgb+depth+segmentation"
CONTROL_MODE = "pd_joint_delta_pos"
#: Substrings of the errors SAPIEN / ManiSkill raise when no usable Vulkan driver is found.
_RENDER_ERRORS = ("rendering device", "physical device", "vk::", "vulkan", "ErrorIncompatibleDriver",
                  "ErrorInitializationFailed")
RENDER_FIX = ("no usable Vulkan rendering driver was found (SAPIEN needs a GPU driver or Mesa's lavapipe "
              ">= 24.3): run scripts/setup.sh, or see 'Troubleshooting' in README.md")


def env_id(subtask: str) -> str:
    """ManiSkill id of a mini_kitchen subtask env, e.g. 'pick' -> 'MiniKitchenPick-v0'."""
    if subtask not in TASK_SUBTASKS[BUILTIN_TASK]:
        raise SgvlaError(f"mini_kitchen has no subtask {subtask!r} (--subtask): choose one of "
                         f"{', '.join(TASK_SUBTASKS[BUILTIN_TASK])}")
    return f"MiniKitchen{subtask.capitalize()}-v0"


def is_render_driver_error(err: BaseException) -> bool:
    """Whether an exception from env creation means the Vulkan driver is missing or too old."""
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(s.lower() in text for s in _RENDER_ERRORS)


def make_env(task: str = BUILTIN_TASK, subtask: str = "pick", obs_mode: str = DEFAULT_OBS_MODE,
             **kwargs) -> gym.Env:
    """Create a mini_kitchen subtask env (Fetch, pd_joint_delta_pos, CPU physics, head and hand
    cameras at 128x128). Extra kwargs go to `gym.make` (e.g. render_mode, max_episode_steps)."""
    import sgvla.envs  # noqa: F401  (registers the env ids)

    subtasks_for(task, subtask)
    if task != BUILTIN_TASK:
        raise SgvlaError(f"--task {task!r} is an MS-HAB task, which needs MS-HAB's assets; only "
                         f"{BUILTIN_TASK!r} is built in")
    kwargs.setdefault("control_mode", CONTROL_MODE)
    kwargs.setdefault("sim_backend", "physx_cpu")
    return gym_make_checked(env_id(subtask), obs_mode=obs_mode, **kwargs)


def gym_make_checked(gym_id: str, **kwargs) -> gym.Env:
    """`gym.make`, turning a missing or too old Vulkan driver into an SgvlaError with the fix
    (SAPIEN's own message names no remedy)."""
    try:
        return gym.make(gym_id, **kwargs)
    except RuntimeError as e:
        if is_render_driver_error(e):
            raise SgvlaError(RENDER_FIX) from e
        raise
