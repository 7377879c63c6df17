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


class _Episode:
    """The record of one episode while it runs: stepping its env and judging each step as MS-HAB's
    evaluation does (success_once; otherwise the env's `fail` flag or the horizon)."""

    def __init__(self, env, subtask: str, seed: int, obs: dict, video_path: Path | None):
        from sgvla.instructions import episode_text

        self.env, self.subtask, self.seed, self.obs, self.video_path = env, subtask, seed, obs, video_path
        self.target = episode_text(env, subtask)[1]
        self.frames = [camera_frame(obs)] if video_path else None
        self.failure: str | None = "horizon"
        self.steps = 0
        self.effect_once: bool | None = None

    def step(self, action) -> bool:
        """Step the env with `action`; whether the episode ended there (success, fail or the env's end)."""
        self.steps += 1
        self.obs, _reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        if self.frames is not None:
            self.frames.append(camera_frame(self.obs))
        if "effect" in info:
            self.effect_once = bool(self.effect_once) or bool(_scalar(info["effect"]))
        if _scalar(info.get("success", False)):
            self.failure = None
            return True
        if "fail" in info and _scalar(info["fail"]):
            self.failure = "fail"
            return True
        return bool(_scalar(truncated) or _scalar(terminated))

    def result(self) -> EpisodeResult:
        """The finished episode's record (its video written first)."""
        video = None
        if self.frames is not None:
            import imageio.v2 as imageio

            self.video_path.parent.mkdir(parents=True, exist_ok=True)
            imageio.mimwrite(self.video_path, self.frames, fps=20, macro_block_size=1)
            video = str(self.video_path)
        return EpisodeResult(self.subtask, self.seed, self.failure is None, self.steps, self.failure, video,
                             self.effect_once, self.target)


def run_episode(env, policy, subtask: str, seed: int, max_steps: int, video_path: Path | None = None) -> EpisodeResult:
    """Roll `policy` out in `env` from `env.reset(seed=seed)`.

    Success is success_once (the first step whose info says success ends the episode), as MS-HAB's
    evaluation counts it; otherwise the failure reason is the env's `fail` flag or the horizon.
    """
    obs, _info = env.reset(seed=seed)
    policy.reset(env, subtask=subtask, seed=seed)
    ep = _Episode(env, subtask, seed, obs, video_path)
    while ep.steps < max_steps and not ep.step(policy.act(env, ep.obs)):
        pass
    return ep.result()


def run_episodes(envs: list, policy, subtask: str, seeds: list[int], max_steps: int,
                 video_paths: list[Path | None] | None = None) -> list[EpisodeResult]:
    """Episode i from `envs[i].reset(seed=seeds[i])`, all in lockstep: each step one batched call
    (`policy.act_batch`, a model policy's) acts for every episode still running, and an episode that
    ends leaves the batch. Each episode is stepped and judged as `run_episode` does, and its actions
    depend on its own seed only (the model's rows are independent), so results match one env at a time.
    """
    video_paths = video_paths or [None] * len(seeds)
    episodes, states = [], []
    for env, seed, video in zip(envs, seeds, video_paths, strict=True):
        obs, _info = env.reset(seed=seed)
        states.append(policy.start(env, subtask, seed))
        episodes.append(_Episode(env, subtask, seed, obs, video))
    live = list(range(len(episodes))) if max_steps > 0 else []
    while live:
        actions = policy.act_batch([states[i] for i in live], [episodes[i].obs for i in live])
        live = [i for i, a in zip(live, actions, strict=True)
                if not episodes[i].step(a) and episodes[i].steps < max_steps]
    return [ep.result() for ep in episodes]
