"""Replaying demonstrations in a live simulator and turning each step into a dataset row.

A `Replayer` owns the simulators of one worker and reuses them across episodes (building a scene
costs seconds, a step tens of milliseconds). Two ways to replay, chosen by the demo file's kind:

* **env states** (exact): reset, set the recorded state, then for every step apply the recorded
  action and set the next recorded state - the same protocol as ManiSkill's
  `replay_trajectory --use-env-states`, so it costs the same one render per step. The row of
  frame t+1 is read from the state the step produced (before the recorded state overwrites
  it); on CPU PhysX that state equals the recording, which the drift check confirms.
* **open loop** (MS-HAB demos, files without states): reset to the recorded start (MS-HAB: its
  build-config / task-plan / spawn indices), apply the actions, compare with the recording.

Row t pairs the observation *before* action t with that action, and the reward and success the
env reported *after* it (T rows for T actions; the final observation is not a row). Rows come
from the replay only - images, masks, poses and grasp flags all describe the same state.

Every batch runs `num_envs` episodes side by side (1 on CPU; on a GPU node a vectorised env with
GPU physics and rendering); all label reads are vectorised over the env axis, so the CPU path and
the GPU path are the same code.
"""

from __future__ import annotations

import json
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sgvla.datagen import mshab as mshab_path
from sgvla.datagen.drift import DriftCheck, DriftTolerance
from sgvla.datagen.labels import FrameLabels, read_labels, resolve_target, to_numpy
from sgvla.datagen.plan import PlannedEpisode
from sgvla.datagen.sources import DemoEpisode, DemoFile, EpisodeArrays, read_episode
from sgvla.dataset.schema import FPS, encode_depth, encode_mask, encode_rgb, source_name
from sgvla.instructions import episode_text
from sgvla.vocab import CAMERA_UIDS

#: Simulators a worker keeps alive at once (e.g. one per subtask env of a mixed run).
MAX_CACHED_ENVS = 2


@dataclass
class ReplayedEpisode:
    """What replaying one planned episode gave: its rows, or why it was dropped."""

    episode: PlannedEpisode
    status: str  # "kept" or "dropped"
    reason: str = ""
    rows: dict[str, list] | None = None
    drift: dict[str, float] = field(default_factory=dict)
    replay_success: bool = False

    def outcome(self) -> dict:
        """JSON summary for the run's manifest (no data)."""
        e = self.episode
        return {"episode_index": e.episode_index, "subtask": e.subtask, "source": f"{e.source}:{e.traj}",
                "length": e.length, "status": self.status, "reason": self.reason,
                "replay_success": self.replay_success,
                "max_drift": {k: round(v, 6) for k, v in sorted(self.drift.items())}}


def make_replay_env(task: str, demo: DemoFile, num_envs: int, sim_backend: str):
    """Rebuild the env a demo file was recorded in, rendering what the dataset records (both
    Fetch cameras' RGB, depth and segmentation: `sgvla.envs.make_env`'s default observation mode)."""
    import mani_skill.envs  # noqa: F401  (registers ManiSkill's own envs)

    # Imported here, not at module level: `sgvla.envs` loads the simulator (and registers
    # MiniKitchen*-v0), which the driver process never needs.
    from sgvla.envs.make import DEFAULT_OBS_MODE, gym_make_checked

    kwargs = dict(demo.env_kwargs)
    if demo.env_id in mshab_path.MSHAB_ENV_IDS:
        import importlib

        importlib.import_module("mshab.envs")  # registers {Subtask}SubtaskTrain-v0
        kwargs.update(mshab_path.env_kwargs(task, demo))
    kwargs.update(obs_mode=DEFAULT_OBS_MODE, num_envs=num_envs, sim_backend=sim_backend, render_mode=None)
    return gym_make_checked(demo.env_id, **kwargs)


def _state_at(states: list[dict], t: int, device) -> dict:
    """Recorded env states of several episodes at step t, stacked on the env axis (clamped)."""
    out = {}
    for key, first in states[0].items():
        if isinstance(first, dict):
            out[key] = _state_at([s[key] for s in states], t, device)
        else:
            rows = [s[key][min(t, len(s[key]) - 1)] for s in states]
            out[key] = torch.as_tensor(np.stack(rows), device=device)
    return out


def _states_close(live: dict, recorded: dict, atol: float = 1e-5) -> bool:
    for key, rec in recorded.items():
        if key not in live:
            return False
        if isinstance(rec, dict):
            if not isinstance(live[key], dict) or not _states_close(live[key], rec, atol):
                return False
        elif not np.allclose(to_numpy(live[key]), to_numpy(rec), atol=atol):
            return False
    return True


class _Batch:
    """Rows, drift and success of the episodes replayed side by side in one vectorised env."""

    def __init__(self, task: str, planned: list[PlannedEpisode], arrays: list[EpisodeArrays],
                 demo_eps: list[DemoEpisode], texts: list[tuple[str, str]], tol: DriftTolerance):
        self.task, self.planned, self.arrays, self.texts = task, planned, arrays, texts
        self.rows = [defaultdict(list) for _ in planned]
        self.drift = [DriftCheck(a.qpos, a.extra, tol) for a in arrays]
        self.success = [False] * len(planned)
        self.recorded_success = [
            bool(d.recorded_success) if d.recorded_success is not None
            else bool(a.success is not None and np.any(a.success)) for d, a in zip(demo_eps, arrays, strict=True)]

    def live(self, t: int) -> list[int]:
        """Episodes that still have a step t and have not drifted away."""
        return [i for i, p in enumerate(self.planned) if t < p.length and self.drift[i].violation is None]

    def check(self, step: int, lab: FrameLabels, obs: dict) -> None:
        extra = obs.get("extra", {}) if isinstance(obs, dict) else {}
        extra = {k: to_numpy(v) for k, v in extra.items() if isinstance(v, torch.Tensor)}  # one copy per step
        for i, p in enumerate(self.planned):
            if step <= p.length and self.drift[i].violation is None:
                self.drift[i].update(step, lab.qpos[i], {k: v[i] for k, v in extra.items()})

    def add_obs(self, t: int, lab: FrameLabels) -> None:
        for i in self.live(t):
            p, r = self.planned[i], self.rows[i]
            instruction, target = self.texts[i]
            r["index"].append(p.index_offset + t)
            r["episode_index"].append(p.episode_index)
            r["frame_index"].append(t)
            r["timestamp"].append(t / FPS)
            r["task"].append(self.task)
            r["subtask"].append(p.subtask)
            r["instruction"].append(instruction)
            r["target"].append(target)
            r["source"].append(f"{source_name(p.source)}:{p.traj}")
            for cam in CAMERA_UIDS:
                r[f"{cam}_rgb"].append(encode_rgb(lab.rgb[cam][i]))
                r[f"{cam}_depth"].append(encode_depth(lab.depth[cam][i]))
                r[f"{cam}_mask"].append(encode_mask(lab.mask[cam][i]))
            r["qpos"].append(lab.qpos[i].tolist())
            r["base_pose"].append(lab.base_pose[i].tolist())
            r["obj_pose"].append(lab.obj_pose[i].tolist())
            r["obj_pose_world"].append(lab.obj_pose_world[i].tolist())
            r["is_grasped"].append(bool(lab.is_grasped[i]))
            r["action"].append(self.arrays[i].labels[t].tolist())

    def add_step(self, t: int, reward, success) -> None:
        reward, success = to_numpy(reward).reshape(-1), to_numpy(success).reshape(-1)
        for i in self.live(t):
            self.rows[i]["reward"].append(float(reward[i]))
            self.rows[i]["success"].append(bool(success[i]))
            self.success[i] |= bool(success[i])

    def actions(self, t: int, num_envs: int) -> torch.Tensor:
        dim = self.arrays[0].actions.shape[1]
        a = np.zeros((num_envs, dim), np.float32)
        for i, arr in enumerate(self.arrays):
            if t < len(arr.actions):
                a[i] = arr.actions[t]
        return torch.from_numpy(a)

    def results(self) -> list[ReplayedEpisode]:
        out = []
        for i, p in enumerate(self.planned):
            d = self.drift[i]
            if d.violation:
                status, reason = "dropped", d.violation
            elif self.recorded_success[i] and not self.success[i]:
                status, reason = "dropped", "replay did not reproduce the recorded success"
            else:
                status, reason = "kept", ""
            out.append(ReplayedEpisode(p, status, reason, dict(self.rows[i]) if status == "kept" else None,
                                     dict(d.max_error), self.success[i]))
        return out


class Replayer:
    """The simulators of one worker and the replay loop (see the module docstring)."""

    def __init__(self, task: str, num_envs: int = 1, sim_backend: str = "physx_cpu",
                 tol: DriftTolerance | None = None):
        self.task, self.num_envs, self.sim_backend = task, num_envs, sim_backend
        self.tol = tol or DriftTolerance()
        self._envs: OrderedDict[str, object] = OrderedDict()
        self._loaded_bcis: dict[str, list[int]] = {}

    def _key(self, demo: DemoFile) -> str:
        extra = demo.target if demo.env_id in mshab_path.MSHAB_ENV_IDS else ""
        return json.dumps([demo.env_id, demo.env_kwargs, extra], sort_keys=True, default=str)

    def env_for(self, demo: DemoFile):
        """The (cached) env for this file; the least recently used one is closed beyond the cap."""
        key = self._key(demo)
        if key in self._envs:
            self._envs.move_to_end(key)
            return self._envs[key]
        # an MS-HAB env holds a whole ReplicaCAD apartment (several GB on CPU): keep only one
        cap = 1 if demo.kind == "mshab" else MAX_CACHED_ENVS
        while len(self._envs) >= cap:
            old_key, old = self._envs.popitem(last=False)
            self._loaded_bcis.pop(old_key, None)
            old.close()
        env = make_replay_env(self.task, demo, self.num_envs, self.sim_backend)
        self._envs[key] = env
        return env

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()

    def replay(self, demo: DemoFile, episodes: list[PlannedEpisode], on_episode=None) -> list[ReplayedEpisode]:
        """Replay `episodes` of `demo`; results in episode_index order, `on_episode` after each."""
        by_traj = {e.traj: e for e in demo.episodes}
        todo = list(episodes)
        if demo.kind == "mshab":  # fewer scene rebuilds: episodes of one ReplicaCAD scene together
            todo.sort(key=lambda p: (by_traj[p.traj].reset_idxs["build_config_idx"], p.episode_index))
        results = []
        for start in range(0, len(todo), self.num_envs):
            planned = todo[start:start + self.num_envs]
            for r in self._replay_batch(demo, planned, [by_traj[p.traj] for p in planned]):
                results.append(r)
                if on_episode is not None:
                    on_episode(r)
        return sorted(results, key=lambda r: r.episode.episode_index)

    def _reset(self, env, demo: DemoFile, demo_eps: list[DemoEpisode]):
        n = self.num_envs
        if demo.kind == "mshab":
            bcis = [int(e.reset_idxs["build_config_idx"]) for e in demo_eps]
            bcis += [bcis[-1]] * (n - len(bcis))
            key = self._key(demo)
            reconfigure = self._loaded_bcis.get(key) != bcis
            padded = list(demo_eps) + [demo_eps[-1]] * (n - len(demo_eps))
            obs, info = env.reset(options=mshab_path.reset_options(padded, reconfigure))
            self._loaded_bcis[key] = bcis
            mshab_path.check_subtask_uids(env.unwrapped, demo, list(demo_eps))
            return obs, info
        if n == 1:
            return env.reset(**demo_eps[0].reset_kwargs)
        seeds = [e.reset_kwargs.get("seed", 0) for e in demo_eps]
        return env.reset(seed=seeds + [seeds[-1]] * (n - len(seeds)))

    def _replay_batch(self, demo: DemoFile, planned: list[PlannedEpisode],
                      demo_eps: list[DemoEpisode]) -> list[ReplayedEpisode]:
        env = self.env_for(demo)
        u = env.unwrapped
        arrays = [read_episode(Path(p.source), p.traj) for p in planned]
        pad = arrays + [arrays[-1]] * (self.num_envs - len(arrays))
        exact = demo.kind == "env_states"
        if not exact and self.num_envs > 1 and demo.kind != "mshab":
            raise RuntimeError("open-loop replay of non-MS-HAB files needs num_envs=1 (reset kwargs per env)")
        obs, info = self._reset(env, demo, demo_eps)
        if exact:
            states = [a.env_states for a in pad]
            s0 = _state_at(states, 0, u.device)
            rerender = not _states_close(u.get_state_dict(), s0)  # else the reset's render is s0's
            u.set_state_dict(s0)
            if rerender:
                obs, info = u.get_obs(), u.get_info()
        target = resolve_target(env, demo.subtask)
        name = demo.target if demo.kind == "mshab" else getattr(target, "name", None)
        texts = [episode_text(env, demo.subtask, name, i) for i in range(len(planned))]
        batch = _Batch(self.task, planned, arrays, demo_eps, texts, self.tol)
        lab = read_labels(env, obs, info, target)
        batch.check(0, lab, obs)
        for t in range(max(p.length for p in planned)):
            if not batch.live(t):
                break
            batch.add_obs(t, lab)
            obs, reward, _, _, info = env.step(batch.actions(t, self.num_envs))
            lab = read_labels(env, obs, info, target)
            batch.add_step(t, reward, info["success"])
            batch.check(t + 1, lab, obs)
            if exact:
                u.set_state_dict(_state_at(states, t + 1, u.device))
        return batch.results()
