"""Policies behind one interface, so the harness measures a learned model and the references alike.

A policy has `reset(env, subtask, seed)` and `act(env, obs) -> (13,) action`. The scripted expert
and the uniform-random policy bracket what the harness can report: the expert should score its demo
success rate and random near zero; if not, the harness (not the model) is broken.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sgvla.errors import SgvlaError, load_json
from sgvla.instructions import episode_text
from sgvla.vocab import view_sensor

REFERENCE_POLICIES = ("expert", "random")
#: `replay:DEMOS` names the blind baseline `ReplayPolicy` over a demo folder.
REPLAY_PREFIX = "replay:"
#: A model served by `sgvla serve` (or any openpi-protocol server speaking sgvla's request keys).
SERVER_PREFIXES = ("ws://", "wss://")


def is_server(spec: str) -> bool:
    return spec.startswith(SERVER_PREFIXES)


def noise_generator_seed(episode_seed: int, noise_seed: int = 0) -> int:
    """Seed of an episode's flow-noise generator. Draw 0 is the episode's reset seed itself, so a rerun
    repeats its rollouts; another draw gives the same episode other noise, which is how to tell a
    flow policy's success at an episode from a lucky sample (docs/results.md, section 1)."""
    if noise_seed == 0:
        return episode_seed
    return int(np.random.SeedSequence([episode_seed, noise_seed]).generate_state(1, np.uint64)[0] >> 1)


def is_reference(spec: str) -> bool:
    """Whether `--model` names a reference policy rather than a checkpoint."""
    return spec in REFERENCE_POLICIES or spec.startswith(REPLAY_PREFIX)


class RandomPolicy:
    """Uniform actions in the env's [-1, 1] box, seeded per episode so reruns repeat."""

    name = "random"

    def reset(self, env, subtask: str, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._shape = env.action_space.shape[-1:]

    def act(self, env, obs) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, size=self._shape).astype(np.float32)


class ExpertPolicy:
    """The scripted expert that made the demonstrations, run closed-loop."""

    name = "expert"

    def reset(self, env, subtask: str, seed: int) -> None:
        from sgvla.envs.expert import ScriptedExpert

        self._expert = ScriptedExpert()
        self._expert.reset(env)

    def act(self, env, obs) -> np.ndarray:
        return self._expert.act(env, obs)


class ReplayPolicy:
    """Blind baseline: the first recorded demo of the subtask, its actions replayed open-loop from
    whatever episode is reset, then zero actions (hold still). It never looks at the cameras, so a
    learned policy must beat it before its use of vision means anything: on the built-in scene the
    episodes of a subtask differ only by a few centimetres, and blind replay already succeeds in some."""

    def __init__(self, demos: str | Path):
        self.demos = Path(demos)
        self.name = f"{REPLAY_PREFIX}{demos}"
        self._actions: dict[str, np.ndarray] = {}

    def reset(self, env, subtask: str, seed: int) -> None:
        if subtask not in self._actions:
            self._actions[subtask] = first_demo_actions(self.demos, subtask)
        self.plan, self.t = self._actions[subtask], 0

    def act(self, env, obs) -> np.ndarray:
        self.t += 1
        if self.t > len(self.plan):
            return np.zeros(self.plan.shape[1], dtype=np.float32)
        return self.plan[self.t - 1]


def first_demo_actions(demos: Path, subtask: str) -> np.ndarray:
    """Executed actions of the lowest-numbered trajectory in DEMOS/<subtask>.h5 (as `sgvla demos` writes)."""
    import h5py

    path = demos / f"{subtask}.h5"
    if not path.is_file():
        raise SgvlaError(f"--model {REPLAY_PREFIX}{demos}: no {path}; record demos with `sgvla demos --out {demos}`")
    with h5py.File(path, "r") as h5:
        trajs = sorted((k for k in h5 if k.startswith("traj_")), key=lambda k: int(k.split("_")[1]))
        if not trajs or "actions" not in h5[trajs[0]]:
            raise SgvlaError(f"{path} holds no trajectory with actions: record it again with `sgvla demos`")
        return np.asarray(h5[trajs[0]]["actions"][()], dtype=np.float32)


def observation_from_obs(obs: dict, views: list[str]) -> dict[str, np.ndarray]:
    """ManiSkill obs (batch of one) -> raw arrays keyed by view name, as the dataset stores them."""
    out = {}
    for view in views:
        uid, key = view_sensor(view)
        data = obs["sensor_data"][uid]
        if key not in data:
            raise SgvlaError(f"the model needs view {view!r} but the env does not render {key}")
        arr = np.asarray(data[key][0].cpu())
        out[view] = arr.astype(np.uint8) if key == "rgb" else np.clip(arr[..., 0], 0, 65535).astype(np.uint16)
    return out


@dataclass
class EpisodeState:
    """What a `ModelPolicy` keeps of one episode: its prompt, its history frames, the actions still
    to execute and its own noise generator. One per env, so several envs can share one model
    (`ModelPolicy.act_batch`) without their episodes leaking into each other."""

    subtask: str
    instruction: str
    generator: Any  # torch.Generator, seeded from the episode
    history: deque
    queue: deque = field(default_factory=deque)

    def push(self, frame: dict[str, np.ndarray]) -> None:
        if not self.history:  # episode start: history clamps to the first frame, as in training
            self.history.extend([frame] * self.history.maxlen)
        else:
            self.history.append(frame)

    def observation(self) -> dict:
        """The current frame with the previous ones under "history", as the processor reads them."""
        frames = list(self.history)
        obs = dict(frames[-1])
        if len(frames) > 1:
            obs["history"] = frames[:-1]
        return obs


class ModelPolicy:
    """An SG-VLA checkpoint: the same preprocessing as training, history frames, action chunks.

    In flow mode the model predicts a chunk of `chunk_size` actions and the first `execute_steps` of
    them are executed before the next query (paper: 2 of 8); token chunks are executed whole.
    `reset`/`act` drive one env; `start`/`act_batch` drive several in lockstep, one model call for
    all the envs whose action queue ran dry.
    """

    def __init__(self, path: str | Path, mode: str = "auto", device: str = "cpu", token_decoding: str | None = None,
                 noise_seed: int = 0):
        model, self.processor = load_policy_model(path)
        self.token_decoding = token_decoding  # None: the model's own (config.token_decoding)
        self.noise_seed = noise_seed  # which draw of the flow noise (see noise_generator_seed)
        self.model = model.to(device)
        self.views, self.n_history = list(self.model.config.views), int(self.model.config.history)
        self.mode = mode
        self.name = str(path)
        self.device = device

    def start(self, env, subtask: str, seed: int) -> EpisodeState:
        """A fresh episode of `env` (just reset with `seed`): every source of randomness seeded from it."""
        import torch

        instruction, _ = episode_text(env, subtask)  # the prompt it was trained with
        generator = torch.Generator().manual_seed(noise_generator_seed(seed, self.noise_seed))
        return EpisodeState(subtask, instruction, generator, deque(maxlen=self.n_history + 1))

    def reset(self, env, subtask: str, seed: int) -> None:
        self.episode = self.start(env, subtask, seed)

    def act(self, env, obs) -> np.ndarray:
        return self.act_batch([self.episode], [obs])[0]

    def act_batch(self, episodes: list[EpisodeState], observations: list) -> list[np.ndarray]:
        """One action per episode (all of one subtask) from its env's observation; the episodes
        that have no planned action left are planned together, in one model call."""
        for ep, obs in zip(episodes, observations, strict=True):
            ep.push(observation_from_obs(obs, self.views))
        empty = [ep for ep in episodes if not ep.queue]
        if empty:
            for ep, plan in zip(empty, self._predict(empty), strict=True):
                ep.queue.extend(plan)
        return [ep.queue.popleft() for ep in episodes]

    def _predict(self, episodes: list[EpisodeState]) -> list[list[np.ndarray]]:
        """The actions each episode executes before its next query."""
        subtasks = {ep.subtask for ep in episodes}
        if len(subtasks) > 1:
            raise SgvlaError(f"act_batch got episodes of several subtasks {sorted(subtasks)}: batch one subtask's")
        with self._precision():
            outs = self.model.predict_actions([ep.observation() for ep in episodes],
                                              [ep.instruction for ep in episodes], subtask=episodes[0].subtask,
                                              mode=self.mode, generators=[ep.generator for ep in episodes],
                                              processor=self.processor, token_decoding=self.token_decoding)
        return [[np.asarray(a, dtype=np.float32) for a in out.execute] for out in outs]

    def _precision(self):
        """bf16 autocast on a GPU (a 1.3B model in fp32 is tens of seconds per step on CPU and needlessly
        slow on a GPU); fp32 on CPU, where the numbers of every earlier result were measured."""
        import contextlib

        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


class ServerConnection:
    """A client of `sgvla serve` (openpi's websocket protocol): metadata on connect, then queries."""

    def __init__(self, url: str, timeout: float = 30.0):
        from contextlib import ExitStack

        from websockets.sync.client import connect

        from sgvla.eval.wire import unpack

        self.stack = ExitStack()
        try:
            self.ws = self.stack.enter_context(connect(url, compression=None, max_size=None, open_timeout=timeout))
            self.meta = unpack(self.ws.recv(timeout=timeout))
        except (OSError, TimeoutError) as e:
            raise SgvlaError(f"--policy-server {url}: cannot connect ({e}): start `sgvla serve MODEL` there "
                             "or check the address") from None
        self.url = url

    def query(self, request: dict) -> dict:
        from sgvla.eval.wire import pack, unpack

        self.ws.send(pack(request))
        reply = self.ws.recv()
        if isinstance(reply, str):
            raise SgvlaError(f"the policy server {self.url} answered: {reply}")
        return unpack(reply)

    def close(self) -> None:
        self.stack.close()


class RemotePolicy(ModelPolicy):
    """A model behind `sgvla serve`: the episode bookkeeping of `ModelPolicy` (instruction, history
    frames, the queue of actions to execute) with the model on the other end of a socket. Flow
    noise is drawn by the server, so flow-mode rollouts are not seeded per episode."""

    def __init__(self, url: str, mode: str = "auto"):
        self.server = ServerConnection(url)
        self.views, self.n_history = list(self.server.meta["views"]), int(self.server.meta["history"])
        self.mode, self.name, self.device, self.noise_seed = mode, url, "cpu", 0

    def _predict(self, episodes: list[EpisodeState]) -> list[list[np.ndarray]]:
        """One query per episode (the server answers one observation at a time)."""
        plans = []
        for ep in episodes:
            request = {**ep.observation(), "prompt": ep.instruction, "subtask": ep.subtask, "mode": self.mode}
            plans.append(list(np.asarray(self.server.query(request)["actions"], dtype=np.float32)))
        return plans


def resolve_checkpoint(path: str | Path) -> Path:
    """A `save_pretrained` folder, a training run folder holding one under `model/`, or a Hub model
    repo id (its cached snapshot, downloaded once; each worker resolves it on its own node)."""
    from sgvla.hub import model_snapshot, names_hub_repo

    if names_hub_repo(str(path)):
        path = model_snapshot(str(path))
    path = Path(path)
    for cand in (path, path / "model"):
        if (cand / "config.json").is_file():
            return cand
    raise SgvlaError(f"--model {path}: no config.json there or in {path / 'model'}; give a checkpoint written "
                     "by `sgvla train` (RUN/model) or save_pretrained, or 'expert' / 'random'")


def load_policy_config(path: str | Path):
    """The checkpoint's SGVLAConfig (cheap: no weights), to plan rendering and check views first."""

    from sgvla.model import SGVLAConfig

    path = resolve_checkpoint(path)
    kind = load_json(path / "config.json", "restore the model folder from `sgvla train`'s RUN/model or a "
                     "snapshot").get("model_type")
    if kind != SGVLAConfig.model_type:
        raise SgvlaError(f"--model {path} holds a {kind!r} model, not an SG-VLA checkpoint")
    return SGVLAConfig.from_pretrained(str(path))


def load_policy_model(path: str | Path):
    """(model in eval mode, its processor) of a checkpoint, loaded strictly (`sgvla.model.load_policy`)."""
    from sgvla.model import load_policy

    model, processor = load_policy(resolve_checkpoint(path))
    model.requires_grad_(False)  # inference only; predict_action runs under no_grad (no global switch)
    return model.eval(), processor


def make_policy(spec: str, mode: str, device: str = "cpu", token_decoding: str | None = None, noise_seed: int = 0):
    """`expert`, `random`, `replay:DEMOS`, `ws://HOST:PORT` (a served model), or a path to a
    checkpoint / training run folder (`token_decoding` and `noise_seed` apply to these only)."""
    if is_server(spec):
        return RemotePolicy(spec, mode=mode)
    if spec == "expert":
        return ExpertPolicy()
    if spec == "random":
        return RandomPolicy()
    if spec.startswith(REPLAY_PREFIX):
        return ReplayPolicy(spec[len(REPLAY_PREFIX):])
    return ModelPolicy(spec, mode=mode, device=device, token_decoding=token_decoding, noise_seed=noise_seed)
