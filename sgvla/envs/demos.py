"""`sgvla demos`: scripted expert demonstrations on mini_kitchen, as ManiSkill trajectory files.

Files follow MS-HAB's published layout (`traj_N/obs/agent/qpos` 12-D, `obs/extra/...`,
`obs/sensor_data/<cam>/{rgb,depth}`, `actions` (T, 13), `success`, `rewards`; JSON `env_info` and
`episodes[i]` with `episode_seed` and `reset_kwargs`) plus `env_states`, because they are written
by ManiSkill's own `RecordEpisode`: ManiSkill's `replay_trajectory` replays them unchanged. Only
successful episodes are kept; the success rate is reported per subtask.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from sgvla.errors import SgvlaError
from sgvla.tasks import BUILTIN_TASK, subtasks_for

#: MS-HAB's demos are recorded with obs_mode "rgbd" (RGB + depth, no segmentation).
DEMO_OBS_MODE = "rgbd"
SETTLE_STEPS = 5


def check_demo_args(task: str, subtask: str, episodes: int, out: Path, seed: int = 0) -> tuple[str, ...]:
    """Validate the CLI arguments before any simulator work; returns the subtasks to record."""
    subtasks = subtasks_for(task, subtask)
    if task != BUILTIN_TASK:
        raise SgvlaError(f"--task {task!r}: scripted expert demos exist only for {BUILTIN_TASK!r}; MS-HAB "
                         "tasks use MS-HAB's published demos (see README.md)")
    if episodes < 1:
        raise SgvlaError(f"--episodes must be at least 1 (got {episodes})")
    if seed < 0:
        raise SgvlaError(f"--seed must be 0 or more (got {seed}): simulator seeds are unsigned")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SgvlaError(f"--out {out} is a file; pass a folder (it receives <subtask>.h5 and .json)")
    return subtasks


def generate_demos(task: str = BUILTIN_TASK, subtask: str = "all", episodes: int = 20,
                   out: Path = Path("outputs/demos"), seed: int = 0, obs_mode: str = DEMO_OBS_MODE,
                   progress: bool = True) -> dict[str, float]:
    """Record `episodes` expert attempts (seeds seed..seed+episodes-1) per subtask into
    `<out>/<subtask>.h5/.json`; returns the expert success rate per subtask."""
    subtasks = check_demo_args(task, subtask, episodes, out, seed)
    out = Path(out)
    rates = {}
    for sub in subtasks:
        kept = record_subtask(sub, episodes, out, seed, obs_mode, progress)
        rates[sub] = kept / episodes
        print(f"{sub}: expert success {kept}/{episodes} = {rates[sub]:.0%}; kept {kept} episodes in "
              f"{out / sub}.h5")
    return rates


def record_subtask(subtask: str, episodes: int, out: Path, seed: int, obs_mode: str = DEMO_OBS_MODE,
                   progress: bool = True) -> int:
    """Record one subtask's demos atomically (temporary names, renamed at the end; removed on any
    error); returns how many episodes succeeded and were kept."""
    from mani_skill.utils.wrappers.record import RecordEpisode

    from sgvla.envs.expert import ScriptedExpert
    from sgvla.envs.make import make_env

    tmp = f".{subtask}.tmp-{os.getpid()}"
    tmp_paths = [out / f"{tmp}.h5", out / f"{tmp}.json"]
    env = make_env(subtask=subtask, obs_mode=obs_mode)  # fails first if the machine cannot render
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        env.close()
        raise SgvlaError(f"cannot create --out folder {out}: {e.strerror}") from e
    try:
        env = RecordEpisode(
            env, output_dir=str(out), trajectory_name=tmp,
            save_video=False, save_on_reset=False, record_reward=True, record_env_state=True,
            source_type="motionplanning",
            source_desc=f"sgvla ScriptedExpert (IK, straight-line gripper paths) on mini_kitchen {subtask}; "
                        "successful episodes only",
        )
        kept = _run_episodes(env, ScriptedExpert(), range(seed, seed + episodes), subtask, progress)
        env.close()
        env = None
        for path, final in zip(tmp_paths, (out / f"{subtask}.h5", out / f"{subtask}.json"), strict=True):
            os.replace(path, final)
        return kept
    finally:
        if env is not None:
            env.close()
        for path in tmp_paths:
            path.unlink(missing_ok=True)


def _run_episodes(env, expert, seeds, subtask: str, progress: bool) -> int:
    """Roll the expert out once per seed; save an episode only if it ends in success.

    An episode ends once success has held for SETTLE_STEPS consecutive steps (or at the time
    limit), so the recorded final state is robustly successful and a replay, whose physics may
    differ in the last float bits, still ends in success.
    """
    kept = 0
    bar = tqdm(seeds, desc=f"demos {subtask}", unit="ep", disable=not progress)
    for s in bar:
        obs, _ = env.reset(seed=s)
        expert.reset(env)
        streak = 0
        while streak < SETTLE_STEPS:
            obs, _, _, truncated, info = env.step(expert.act(env, obs))
            streak = streak + 1 if bool(info["success"][0]) else 0
            if bool(truncated[0]):
                break
        success = streak > 0
        env.flush_trajectory(save=success)
        kept += success
        bar.set_postfix(kept=kept)
    return kept
