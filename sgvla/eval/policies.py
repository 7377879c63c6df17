"""Policies behind one interface, so the harness measures a learned model and the references alike.

A policy has `reset(env, subtask, seed)` and `act(env, obs) -> (13,) action`. The scripted expert
and the uniform-random policy bracket what the harness can report: the expert should score its demo
success rate and random near zero; if not, the harness (not the model) is broken.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from sgvla.errors import SgvlaError

REFERENCE_POLICIES = ("expert", "random")


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


def observation_from_obs(obs: dict, views: list[str]) -> dict[str, np.ndarray]:
    """ManiSkill obs (batch of one) -> raw arrays keyed by view name, as the dataset stores them."""
    out = {}
    for view in views:
        cam, kind = view.split("_")
        data = obs["sensor_data"][f"fetch_{cam}"]
        key = "rgb" if kind == "rgb" else "depth"
        if key not in data:
            raise SgvlaError(f"the model needs view {view!r} but the env does not render {key}")
        arr = np.asarray(data[key][0].cpu())
        out[view] = arr.astype(np.uint8) if kind == "rgb" else np.clip(arr[..., 0], 0, 65535).astype(np.uint16)
    return out


class ModelPolicy:
    """An SG-VLA checkpoint: the same preprocessing as training, history frames, action chunks.

    In flow mode the model predicts a chunk of `chunk_size` actions and the first `execute_steps` of
    them are executed before the next query (paper: 2 of 8).
    """

    def __init__(self, path: str | Path, mode: str = "auto"):
        self.model = load_policy_model(path)
        self.config = self.model.config
        self.mode = mode
        self.name = str(path)

    def reset(self, env, subtask: str, seed: int) -> None:
        import torch

        self.subtask = subtask
        self.instruction = env.unwrapped.instruction
        self.history: deque = deque(maxlen=self.config.history + 1)
        self.queue: deque = deque()
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, env, obs) -> np.ndarray:
        frame = observation_from_obs(obs, list(self.config.views))
        if not self.history:  # episode start: history clamps to the first frame, as in training
            self.history.extend([frame] * self.history.maxlen)
        else:
            self.history.append(frame)
        if not self.queue:
            out = self.model.predict_action(
                self._observation(), self.instruction, subtask=self.subtask, mode=self.mode,
                generator=self.generator,
            )
            self.queue.extend(np.asarray(a, dtype=np.float32) for a in out.execute)
        return self.queue.popleft()

    def _observation(self) -> dict:
        frames = list(self.history)
        obs = dict(frames[-1])
        if self.config.history:
            obs["history"] = frames[:-1]
        return obs


def resolve_checkpoint(path: str | Path) -> Path:
    """A `save_pretrained` folder, or a training run folder holding one under `model/`."""
    path = Path(path)
    for cand in (path, path / "model"):
        if (cand / "config.json").is_file():
            return cand
    raise SgvlaError(f"--model {path}: no config.json there or in {path / 'model'}; give a checkpoint written "
                     "by `sgvla train` (RUN/model) or save_pretrained, or 'expert' / 'random'")


def load_policy_config(path: str | Path):
    """The checkpoint's SGVLAConfig (cheap: no weights), to plan rendering and check views first."""
    import json

    from sgvla.model import SGVLAConfig

    path = resolve_checkpoint(path)
    kind = json.loads((path / "config.json").read_text()).get("model_type")
    if kind != SGVLAConfig.model_type:
        raise SgvlaError(f"--model {path} holds a {kind!r} model, not an SG-VLA checkpoint")
    return SGVLAConfig.from_pretrained(str(path))


def load_policy_model(path: str | Path):
    from sgvla.model import SGVLAForActionPrediction

    model = SGVLAForActionPrediction.from_pretrained(str(resolve_checkpoint(path)))
    model.requires_grad_(False)  # inference only; predict_action runs under no_grad (no global switch)
    return model.eval()


def make_policy(spec: str, mode: str):
    """`expert`, `random`, or a path to a checkpoint / training run folder."""
    if spec == "expert":
        return ExpertPolicy()
    if spec == "random":
        return RandomPolicy()
    return ModelPolicy(spec, mode=mode)
