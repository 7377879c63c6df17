"""One closed-loop episode: reset with a seed, ask the policy, step, stop at first success (MS-HAB's success_once)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class EpisodeResult:
    subtask: str
    seed: int
    success: bool
    steps: int
    failure: str | None
    video: str | None = None
    #: Whether the subtask's effect (grasped / on the goal / drawer open / shut) held at any step,
    #: rest or not; None for envs that do not report an `effect` (MS-HAB's).
    effect_once: bool | None = None
    #: The episode's target as its task names it ("red cube", "drawer"; MS-HAB: "024_bowl",
    #: "fridge", "kitchen_counter"): MS-HAB's tables report open/close per articulation.
    target: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _scalar(x) -> float:
    return float(np.asarray(x.cpu() if hasattr(x, "cpu") else x).reshape(-1)[0])


def camera_frame(obs: dict) -> np.ndarray:
    """Head and hand RGB side by side (uint8), the frame written to evaluation videos."""
    views = [np.asarray(obs["sensor_data"][cam]["rgb"][0].cpu()) for cam in ("fetch_head", "fetch_hand")]
    return np.concatenate(views, axis=1).astype(np.uint8)


def run_episode(env, policy, subtask: str, seed: int, max_steps: int, video_path: Path | None = None) -> EpisodeResult:
    """Roll `policy` out in `env` from `env.reset(seed=seed)`.

    Success is success_once (the first step whose info says success ends the episode), as MS-HAB's
    evaluation counts it; otherwise the failure reason is the env's `fail` flag or the horizon.
    """
    from sgvla.instructions import episode_text

    obs, info = env.reset(seed=seed)
    policy.reset(env, subtask=subtask, seed=seed)
    target = episode_text(env, subtask)[1]
    frames = [camera_frame(obs)] if video_path else None
    failure: str | None = "horizon"
    steps = 0
    effect_once = None
    while steps < max_steps:
        steps += 1
        action = np.asarray(policy.act(env, obs), dtype=np.float32)
        obs, _reward, terminated, truncated, info = env.step(action)
        if frames is not None:
            frames.append(camera_frame(obs))
        if "effect" in info:
            effect_once = bool(effect_once) or bool(_scalar(info["effect"]))
        if _scalar(info.get("success", False)):
            failure = None
            break
        if "fail" in info and _scalar(info["fail"]):
            failure = "fail"
            break
        if _scalar(truncated) or _scalar(terminated):
            break
    video = None
    if frames is not None:
        import imageio.v2 as imageio

        video_path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimwrite(video_path, frames, fps=20, macro_block_size=1)
        video = str(video_path)
    return EpisodeResult(subtask, seed, failure is None, steps, failure, video, effect_once, target)
