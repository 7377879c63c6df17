"""Simulated scenes. Importing this package registers the built-in `mini_kitchen` envs with ManiSkill.

Public helpers: `make_env(task, subtask, obs_mode, **kwargs)`, `env_id(subtask)` and, in
`sgvla.envs.expert`, the `ScriptedExpert` policy.
"""

from sgvla.envs import mini_kitchen  # noqa: F401  (registers MiniKitchen{Pick,Place,Open,Close}-v0)
from sgvla.envs.make import env_id, make_env

__all__ = ["env_id", "make_env"]
