"""Demonstration files: finding them, checking them and reading one episode's arrays.

A demo file is a ManiSkill trajectory pair `<name>.h5` + `<name>.json` (what `RecordEpisode`
writes, what `sgvla demos` writes and what MS-HAB publishes). How a file is replayed depends on
what it holds, so each file gets a `kind`:

* ``env_states`` - the h5 has `traj_N/env_states`: replay exactly by setting the recorded state
  after every step (our built-in demos, any RecordEpisode file made with env states);
* ``mshab`` - no env states but the JSON episodes carry MS-HAB's reset indices
  (`build_config_idx`, `task_plan_idx`, ...): rebuild the MS-HAB env, reset with them, step the
  actions open-loop and check the drift against the recorded observations;
* ``actions`` - neither: reset with the recorded `reset_kwargs` and step open-loop with the same
  drift check (any deterministic ManiSkill env recorded without states).

Every file is checked when the run is planned - it opens, its JSON lists exactly the
trajectories the h5 holds, lengths agree - so a broken download stops the run with one clear line
before any simulator starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sgvla.dataset.schema import ACTION_DIM
from sgvla.errors import SgvlaError
from sgvla.tasks import EXPERT_ACTIONS, SUBTASKS

KINDS = ("env_states", "mshab", "actions")
#: JSON episode keys MS-HAB's recorder adds; they rebuild the episode's start state.
MSHAB_RESET_KEYS = ("build_config_idx", "task_plan_idx", "init_config_idx", "spawn_selection_idx")


@dataclass(frozen=True)
class DemoEpisode:
    """One trajectory of a demo file, as listed by its JSON."""

    traj: str
    episode_id: int
    length: int
    reset_kwargs: dict = field(default_factory=dict)
    #: MS-HAB reset indices (empty for other kinds) and the recorded success flag.
    reset_idxs: dict = field(default_factory=dict)
    recorded_success: bool | None = None
    #: MS-HAB: the uid of the subtask the episode was recorded on (later releases of the demos).
    subtask_uid: str | None = None


@dataclass(frozen=True)
class DemoFile:
    """A checked demo file: how to rebuild its env, how to replay it, and its episodes."""

    path: Path
    env_id: str
    env_kwargs: dict
    max_episode_steps: int | None
    subtask: str
    kind: str
    episodes: tuple[DemoEpisode, ...]

    @property
    def json_path(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def target(self) -> str:
        """Target name from the file name (MS-HAB names files by object / articulation)."""
        return self.path.stem


def subtask_of_env(env_id: str) -> str | None:
    """`PickSubtaskTrain-v0`, `MiniKitchenPick-v0`, `PickCube-v1` -> "pick"; None when unclear."""
    low = env_id.lower()
    hits = [s for s in SUBTASKS if s in low]
    return hits[0] if len(hits) == 1 else None


def _load_json(path: Path, h5_path: Path) -> dict:
    if not path.is_file():
        raise SgvlaError(f"demo file {h5_path} has no JSON next to it ({path.name}): copy the .json "
                         "that was written with it into the same folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SgvlaError(f"{path} is not valid JSON ({e}): re-download or re-generate it together "
                         f"with {h5_path.name}") from e
    if not isinstance(data, dict) or "env_info" not in data or "episodes" not in data:
        raise SgvlaError(f"{path} is not a ManiSkill trajectory JSON (needs 'env_info' and 'episodes'): "
                         f"pass the .h5 that RecordEpisode or `sgvla demos` wrote")
    return data


def _mismatch(json_path: Path, h5_path: Path, what: str) -> SgvlaError:
    return SgvlaError(f"{json_path} does not match {h5_path} ({what}): the two files must come from the "
                      "same recording; re-download or re-generate both together")


def _episode(ep: dict, h5: h5py.File, json_path: Path, h5_path: Path) -> DemoEpisode:
    try:
        eid = int(ep["episode_id"])
    except (KeyError, TypeError, ValueError) as e:
        raise _mismatch(json_path, h5_path, f"an episode entry has no episode_id: {str(ep)[:80]}") from e
    traj = f"traj_{eid}"
    if traj not in h5 or "actions" not in h5[traj]:
        raise _mismatch(json_path, h5_path, f"the h5 has no {traj}/actions")
    length = int(h5[traj]["actions"].shape[0])
    if "elapsed_steps" in ep and int(ep["elapsed_steps"]) != length:
        raise _mismatch(json_path, h5_path, f"{traj} has {length} actions but the JSON says "
                                            f"elapsed_steps={ep['elapsed_steps']}")
    if length == 0:
        raise _mismatch(json_path, h5_path, f"{traj} has no actions")
    obs = h5[traj].get("obs")
    if isinstance(obs, h5py.Group) and "agent" in obs:  # obs_mode="state" stores a dataset here
        n_obs = obs["agent"]["qpos"].shape[0]
        if n_obs != length + 1:
            raise _mismatch(json_path, h5_path, f"{traj} has {n_obs} observations for {length} actions")
    reset_kwargs = dict(ep.get("reset_kwargs") or {})
    if "seed" not in reset_kwargs and isinstance(ep.get("episode_seed"), int):
        reset_kwargs["seed"] = ep["episode_seed"]
    if isinstance(reset_kwargs.get("seed"), list) and len(reset_kwargs["seed"]) == 1:
        reset_kwargs["seed"] = reset_kwargs["seed"][0]
    idxs = {k: ep[k] for k in MSHAB_RESET_KEYS if k in ep}
    succ = ep.get("success_once", ep.get("success"))
    uid = ep.get("subtask_uid")
    return DemoEpisode(traj, eid, length, reset_kwargs, idxs, None if succ is None else bool(succ),
                       str(uid) if uid else None)


def check_demo_actions(demo: DemoFile) -> None:
    """Fetch's 13-D actions, all finite, in every episode of `demo`: checked in the driver (after
    its env id), before any worker starts, so a demo file of another robot or a damaged one is one
    error line rather than a worker crash."""
    with h5py.File(demo.path, "r") as h5:
        for e in demo.episodes:
            g = h5[e.traj]
            shape = g["actions"].shape
            if len(shape) != 2 or shape[1] != ACTION_DIM:
                raise SgvlaError(f"{demo.path} {e.traj}/actions has shape {shape}, not (T, {ACTION_DIM}): sgvla "
                                 f"replays Fetch's {ACTION_DIM}-D pd_joint_delta_pos actions (MS-HAB's); remove "
                                 "this file from --demos")
            for name in ("actions", EXPERT_ACTIONS):
                if name in g and not np.isfinite(g[name][()]).all():
                    raise SgvlaError(f"{demo.path} {e.traj}/{name} holds NaN or inf: the demo is damaged; "
                                     "re-record it or remove the file from --demos")


def _kind(h5: h5py.File, episodes: list[DemoEpisode]) -> str:
    if "env_states" in h5[episodes[0].traj]:
        return "env_states"
    if all(k in episodes[0].reset_idxs for k in MSHAB_RESET_KEYS):
        return "mshab"
    return "actions"


def read_demo_file(h5_path: Path, subtask: str | None = None) -> DemoFile:
    """Open and check one demo file; `subtask` is used when the env id does not name one."""
    h5_path = Path(h5_path)
    json_path = h5_path.with_suffix(".json")
    data = _load_json(json_path, h5_path)
    env_info = data["env_info"]
    env_id = env_info.get("env_id")
    if not env_id:
        raise SgvlaError(f"{json_path} has no env_info.env_id: it was not written by RecordEpisode")
    sub = subtask_of_env(env_id) or subtask
    if sub is None:
        raise SgvlaError(f"cannot tell the subtask of {h5_path} (env {env_id}): put it in a folder named "
                         f"after its subtask ({', '.join(SUBTASKS)}) or pass --subtask")
    try:
        with h5py.File(h5_path, "r") as h5:
            if not data["episodes"]:
                raise SgvlaError(f"{json_path} lists no episodes: nothing to replay in {h5_path}")
            eps = [_episode(ep, h5, json_path, h5_path) for ep in data["episodes"]]
            kind = _kind(h5, eps)
    except OSError as e:
        raise SgvlaError(f"{h5_path} is not a readable HDF5 file ({e}): re-download or re-generate it, "
                         "or remove it from --demos") from e
    if len({e.episode_id for e in eps}) != len(eps):
        raise _mismatch(json_path, h5_path, "an episode_id is listed twice")
    return DemoFile(h5_path, env_id, dict(env_info.get("env_kwargs") or {}),
                    env_info.get("max_episode_steps"), sub, kind, tuple(eps))


def find_demo_files(demos: Path, subtasks: tuple[str, ...]) -> dict[str, list[DemoFile]]:
    """Demo files under `demos` (a .h5, or a folder of .h5 and `<subtask>/*.h5`) per subtask.

    Every requested subtask must have at least one file; files of other subtasks are ignored.
    """
    demos = Path(demos)
    if not demos.exists():
        raise SgvlaError(f"--demos {demos} does not exist: pass a demo .h5 file or a folder of them")
    if demos.is_file():
        if demos.suffix != ".h5":
            raise SgvlaError(f"--demos {demos} is not a .h5 trajectory file")
        candidates = [(demos, subtasks[0] if len(subtasks) == 1 else None)]
    else:
        candidates = [(p, None) for p in sorted(demos.glob("*.h5"))]
        for s in SUBTASKS:
            candidates += [(p, s) for p in sorted((demos / s).glob("*.h5"))]
        candidates = [(p, s or (p.stem if p.stem in SUBTASKS else None)) for p, s in candidates]
    by_subtask: dict[str, list[DemoFile]] = {s: [] for s in subtasks}
    for path, hint in candidates:
        if path.name.startswith(".") or (hint is not None and hint not in by_subtask):
            continue  # temp files, and files named after a subtask that was not asked for
        f = read_demo_file(path, hint)
        if f.subtask in by_subtask:
            by_subtask[f.subtask].append(f)
    missing = [s for s, fs in by_subtask.items() if not fs]
    if missing:
        raise SgvlaError(f"--demos {demos} holds no demonstrations for subtask(s) {', '.join(missing)}: add "
                         "them (<subtask>.h5 or <subtask>/*.h5) or choose --subtask")
    return by_subtask


@dataclass
class EpisodeArrays:
    """What the replay needs from one trajectory of the h5 (read in the worker, not the driver)."""

    actions: np.ndarray
    #: The action each row is labelled with: the expert's own (`expert_actions`) where the demo
    #: executed a perturbed one (noise injection, `sgvla demos --noise`), else `actions`.
    labels: np.ndarray
    env_states: dict | None
    qpos: np.ndarray | None
    extra: dict[str, np.ndarray]
    success: np.ndarray | None


def _read_group(g) -> dict:
    return {k: (_read_group(v) if isinstance(v, h5py.Group) else v[()]) for k, v in g.items()}


def read_episode(path: Path, traj: str) -> EpisodeArrays:
    """Load actions, env states and the recorded observations used by the drift check."""
    with h5py.File(path, "r") as h5:
        g = h5[traj]
        obs = g.get("obs")
        obs = obs if isinstance(obs, h5py.Group) else None  # obs_mode="state" stores a dataset here
        qpos = obs["agent"]["qpos"][()] if obs is not None and "agent" in obs else None
        extra = _read_group(obs["extra"]) if obs is not None and "extra" in obs else {}
        actions = g["actions"][()].astype(np.float32)
        labels = g[EXPERT_ACTIONS][()].astype(np.float32) if EXPERT_ACTIONS in g else actions
        if labels.shape != actions.shape:
            raise SgvlaError(f"{path} {traj}/{EXPERT_ACTIONS} has shape {labels.shape}, its actions "
                             f"{actions.shape}: re-record the demos")
        return EpisodeArrays(
            actions=actions,
            labels=labels,
            env_states=_read_group(g["env_states"]) if "env_states" in g else None,
            qpos=qpos,
            extra=extra,
            success=g["success"][()] if "success" in g else None,
        )
