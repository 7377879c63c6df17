"""`sgvla demos`: scripted expert demonstrations on mini_kitchen, as ManiSkill trajectory files.

Files follow MS-HAB's published layout (`traj_N/obs/agent/qpos` 12-D, `obs/extra/...`,
`obs/sensor_data/<cam>/{rgb,depth}` with `images`, `actions` (T, 13), `success`, `rewards`; JSON
`env_info` and `episodes[i]` with `episode_seed` and `reset_kwargs`) plus `env_states`, because they
are written by ManiSkill's own `RecordEpisode`: ManiSkill's `replay_trajectory` replays them
unchanged. Only successful episodes are kept; the success rate is reported per subtask.

Noise injection (`noise` > 0, DART): the arm executes the expert's action plus Gaussian noise, while
each step's label stays the expert's clean action for the state actually reached (stored as
`traj_N/expert_actions`, which `sgvla gen` uses as the dataset's `action`). A policy trained on
that has seen how to come back to the demonstrated path from small deviations, which a scripted
expert that never leaves its ideal path cannot show. With `repeats` > 1 every episode is recorded
that many times: the clean demonstration first, then perturbed copies (fresh noise each).

Token grid (`token_grid` = N > 0): every action the expert executes (and its label) is snapped to
the centre of its bin in an N-bin action tokenizer over the controllers' normalised range [-1, 1].
Trained with `data.action_normalization: none`, a token policy can then output a demo's actions
exactly, so a policy that memorised one demo replays its states exactly, where a continuous
expert's actions are only reproduced to half a bin and the rollout drifts off the demo
(docs/results.md, section 1). The expert runs closed loop on the snapped actions, so it still
succeeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sgvla.errors import SgvlaError
from sgvla.tasks import BUILTIN_TASK, EXPERT_ACTIONS, split_seeds, subtasks_for
from sgvla.transforms import snap_to_bins

#: MS-HAB's demos are recorded with obs_mode "rgbd" (RGB + depth, no segmentation).
DEMO_OBS_MODE = "rgbd"
#: Without images: proprioception and `extra` only, all `sgvla gen` reads from a demo (it renders
#: every view itself). Rendering is most of the recording time.
NO_IMAGES_OBS_MODE = "state_dict"
SETTLE_STEPS = 5
#: Action dimensions noise is added to: the 7 arm joints (gripper, body and base stay clean).
NOISE_DIMS = slice(0, 7)


def check_demo_args(task: str, subtask: str, episodes: int, out: Path, seed: int = 0,
                    split: str = "train", noise: float = 0.0,
                    repeats: int = 1, token_grid: int = 0) -> tuple[tuple[str, ...], list[int]]:
    """Validate the CLI arguments before any simulator work; returns the subtasks to record and
    the reset seeds of the attempts (episodes seed .. seed+episodes-1 of `split`)."""
    subtasks = subtasks_for(task, subtask)
    if task != BUILTIN_TASK:
        raise SgvlaError(f"--task {task!r}: scripted expert demos exist only for {BUILTIN_TASK!r}; MS-HAB "
                         "tasks use MS-HAB's published demos (see README.md)")
    if episodes < 1:
        raise SgvlaError(f"--episodes must be at least 1 (got {episodes})")
    seeds = split_seeds(split, seed, episodes)
    if not 0.0 <= noise <= 1.0:
        raise SgvlaError(f"--noise must be between 0 and 1 (std of the arm action noise), got {noise}")
    if repeats < 1 or (repeats > 1 and noise == 0):
        raise SgvlaError(f"--repeats {repeats}: give 1, or more together with --noise > 0 (repeats without "
                         "noise would record the same trajectory again)")
    if token_grid < 0 or token_grid == 1:
        raise SgvlaError(f"--token-grid {token_grid}: give 0 (off) or the action-token bin count of the model "
                         "to train (e.g. 15)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SgvlaError(f"--out {out} is a file; pass a folder (it receives <subtask>.h5 and .json)")
    return subtasks, seeds


def generate_demos(task: str = BUILTIN_TASK, subtask: str = "all", episodes: int = 20,
                   out: Path = Path("outputs/demos"), seed: int = 0, images: bool = False,
                   progress: bool = True, split: str = "train", noise: float = 0.0,
                   repeats: int = 1, token_grid: int = 0) -> dict[str, float]:
    """Record `episodes` expert attempts (episodes seed..seed+episodes-1 of `split`) per subtask
    into `<out>/<subtask>.h5/.json`; returns the expert success rate per subtask. `images=True`
    adds `obs/sensor_data` (MS-HAB's full layout), which `sgvla gen` never reads and which takes
    most of the recording time. `token_grid=N` records the expert on the grid of an N-bin action
    tokenizer (module doc)."""
    subtasks, seeds = check_demo_args(task, subtask, episodes, out, seed, split, noise, repeats, token_grid)
    attempts = [(s, r) for s in seeds for r in range(repeats)]
    out = Path(out)
    obs_mode = DEMO_OBS_MODE if images else NO_IMAGES_OBS_MODE
    rates = {}
    for sub in subtasks:
        kept = record_subtask(sub, attempts, out, obs_mode, progress, noise, token_grid)
        rates[sub] = kept / len(attempts)
        print(f"{sub}: expert success {kept}/{len(attempts)} = {rates[sub]:.0%}; kept {kept} episodes in "
              f"{out / sub}.h5")
    return rates


def record_subtask(subtask: str, attempts: list[tuple[int, int]], out: Path, obs_mode: str = DEMO_OBS_MODE,
                   progress: bool = True, noise: float = 0.0, token_grid: int = 0) -> int:
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
                        f"successful episodes only; arm action noise std {noise}"
                        + (f"; actions on the {token_grid}-bin token grid" if token_grid else ""),
        )
        labels = _run_episodes(env, ScriptedExpert(), attempts, subtask, progress, noise, token_grid)
        env.close()
        env = None
        if noise > 0:
            _write_labels(tmp_paths[0], labels)
        for path, final in zip(tmp_paths, (out / f"{subtask}.h5", out / f"{subtask}.json"), strict=True):
            os.replace(path, final)
        return len(labels)
    finally:
        if env is not None:
            env.close()
        for path in tmp_paths:
            path.unlink(missing_ok=True)


def _write_labels(h5_path: Path, labels: list[np.ndarray]) -> None:
    """Add each kept trajectory's clean expert actions next to the executed ones."""
    import h5py

    with h5py.File(h5_path, "r+") as h5:
        for i, clean in enumerate(labels):
            h5[f"traj_{i}"].create_dataset(EXPERT_ACTIONS, data=clean)


def _run_episodes(env, expert, attempts: list[tuple[int, int]], subtask: str, progress: bool,
                  noise: float = 0.0, token_grid: int = 0) -> list[np.ndarray]:
    """Roll the expert out once per (seed, repeat); repeat 0 is clean, later ones perturbed. Save an
    episode only if it ends in success. Returns the clean expert actions of each kept episode.

    An episode ends once success has held for SETTLE_STEPS consecutive steps (or at the time
    limit), so the recorded final state is robustly successful and a replay, whose physics may
    differ in the last float bits, still ends in success.
    """
    kept: list[np.ndarray] = []
    repeated = any(r > 0 for _, r in attempts)  # then repeat 0 of each seed is the clean demo
    bar = tqdm(attempts, desc=f"demos {subtask}", unit="ep", disable=not progress)
    for s, r in bar:
        obs, _ = env.reset(seed=s)
        expert.reset(env)
        rng = np.random.default_rng([s, r])
        std = noise if r > 0 or not repeated else 0.0
        clean = []
        streak = 0
        while streak < SETTLE_STEPS:
            action = expert.act(env, obs)
            if token_grid:
                action = snap_to_bins(action, token_grid)
            clean.append(action)
            if std > 0 and expert.stage != "hold":  # success needs a still arm at rest: no noise there
                action = action.copy()
                action[NOISE_DIMS] = np.clip(action[NOISE_DIMS] + rng.normal(0, std, action[NOISE_DIMS].shape), -1, 1)
                if token_grid:
                    action = snap_to_bins(action, token_grid)
            obs, _, _, truncated, info = env.step(action)
            streak = streak + 1 if bool(info["success"][0]) else 0
            if bool(truncated[0]):
                break
        success = streak > 0
        env.flush_trajectory(save=success)
        if success:
            kept.append(np.stack(clean).astype(np.float32))
        bar.set_postfix(kept=len(kept))
    return kept
