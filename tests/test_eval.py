"""`sgvla eval`: the harness measures what it says (expert high, random low), reruns repeat, a
tiny model runs end to end in both action modes, and bad input fails before any rollout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sgvla import provenance
from sgvla.cli import app
from sgvla.eval.runner import run_eval
from sgvla.tasks import SPLIT_SIZE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _module_ray(ray_cluster):
    yield


def test_expert_succeeds_random_fails_and_reruns_repeat(tmp_path):
    import ray

    expert = run_eval("expert", "mini_kitchen", "pick", episodes=4, out=tmp_path / "expert", workers=2)
    assert ray.is_initialized(), "eval must leave running a Ray it did not start"
    rate = expert["aggregate"]["per_subtask"]["pick"]["success_rate"]
    assert rate >= 0.75, expert["episodes"]
    # A success implies the effect held at that step; partial progress is reported per subtask.
    assert all(e["effect_once"] for e in expert["episodes"] if e["success"])
    assert expert["aggregate"]["per_subtask"]["pick"]["effect_rate"] >= rate
    # Same seeds, same episodes, step for step, though one worker now runs all four in a row.
    again = run_eval("expert", "mini_kitchen", "pick", episodes=4, out=tmp_path / "again", workers=1)
    assert again["episodes"] == expert["episodes"]

    rand = run_eval("random", "mini_kitchen", "pick", episodes=2, out=tmp_path / "random", workers=2, max_steps=20)
    assert rand["aggregate"]["per_subtask"]["pick"]["success_rate"] == 0
    assert all(e["failure"] for e in rand["episodes"])

    saved = json.loads((tmp_path / "expert" / "results.json").read_text())
    val = list(range(SPLIT_SIZE, SPLIT_SIZE + 4))  # held-out episodes by default
    assert saved["split"] == "val" and saved["seeds"] == val and [e["seed"] for e in saved["episodes"]] == val
    assert saved["software"] == provenance.software()  # which libraries and CPU measured it
    table = (tmp_path / "expert" / "results.md").read_text()
    assert "| Pick | Place | Open | Close | Avg. |" in table and f"val episodes (reset seeds {val[0]}.." in table


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from sgvla.model import SGVLAConfig, SGVLAForActionPrediction

    stats = {k: [0.0] * 13 for k in ("mean", "std")}
    stats.update(min=[-1.0] * 13, max=[1.0] * 13, q01=[-1.0] * 13, q99=[1.0] * 13)
    cfg = SGVLAConfig.from_preset("tiny", views=["head_rgb", "hand_rgb", "head_depth"], action_stats=stats,
                                  use_flow_expert=True)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    SGVLAForActionPrediction(cfg).save_pretrained(path)
    return path


def test_an_episode_does_not_depend_on_the_episodes_before_it():
    """PhysX keeps contact and solver state across a plain reset; evaluation must not inherit it,
    or an episode's outcome would depend on which worker ran it after what."""
    from sgvla.eval.policies import ExpertPolicy
    from sgvla.eval.runner import make_eval_env

    def qpos_after(env, seed: int, steps: int = 2) -> np.ndarray:
        policy, (obs, _) = ExpertPolicy(), env.reset(seed=seed)
        policy.reset(env, "place", seed)
        for _ in range(steps):
            obs = env.step(policy.act(env, obs))[0]
        return env.unwrapped.agent.robot.get_qpos().numpy()

    seed = SPLIT_SIZE + 7
    fresh = qpos_after(make_eval_env("mini_kitchen", "place", "rgb"), seed)
    env = make_eval_env("mini_kitchen", "place", "rgb")
    qpos_after(env, seed + 1)
    np.testing.assert_array_equal(qpos_after(env, seed), fresh)


def test_blind_replay_reproduces_its_own_episode_and_names_missing_demos(tmp_path):
    from sgvla.envs.demos import generate_demos
    from sgvla.errors import SgvlaError

    generate_demos(subtask="close", episodes=1, out=tmp_path / "demos", progress=False)
    res = run_eval(f"replay:{tmp_path / 'demos'}", "mini_kitchen", "close", episodes=1, out=tmp_path / "own",
                   split="train", workers=1)
    # Train episode 0 is the recorded one: replaying its actions from its own reset succeeds again.
    assert res["episodes"][0]["seed"] == 0 and res["episodes"][0]["success"], res["episodes"]
    with pytest.raises(SgvlaError, match="open.h5"):
        run_eval(f"replay:{tmp_path / 'demos'}", "mini_kitchen", "open", episodes=1, out=tmp_path / "x")


@pytest.mark.parametrize("mode", ["tokens", "flow"])
def test_tiny_model_runs_end_to_end(tiny_checkpoint, tmp_path, mode):
    decoding = "expected" if mode == "tokens" else None  # reaches the policy in the worker (tokens only)
    draw = 3 if mode == "flow" else 0
    res = run_eval(str(tiny_checkpoint), "mini_kitchen", "pick", episodes=1, out=tmp_path, mode=mode,
                   workers=1, max_steps=12, video=True, token_decoding=decoding, noise_seed=draw)
    assert res["token_decoding"] == decoding and res["noise_seed"] == draw
    assert ("flow-noise draw 3" in (tmp_path / "results.md").read_text()) == (mode == "flow")
    (ep,) = res["episodes"]
    assert ep["steps"] == 12 and ep["success"] is False
    assert res["views"] == ["head_rgb", "hand_rgb", "head_depth"]
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.md").is_file()
    video = tmp_path / "videos" / f"pick-seed{SPLIT_SIZE}.mp4"
    assert video.stat().st_size > 1000
    import imageio.v3 as iio

    frames = iio.imread(video)
    assert frames.shape[0] == 13 and frames.shape[2] == 256 and np.ptp(frames) > 0


class _ScriptedEnv:
    """The reset/step surface `run_episode` reads, with episodes that end at different steps (seed
    10: success at step 3, 11: `fail` at 5, 12: never) and observations that depend only on the
    seed and the step, so any difference in the actions is the policy's."""

    views = ("head_rgb", "hand_rgb", "head_depth")

    def __init__(self):
        self.unwrapped, self.actions = self, []

    def _obs(self) -> dict:
        import torch

        from sgvla.vocab import view_sensor

        g = np.random.default_rng((self.seed, self.t))
        data: dict = {}
        for view in self.views:
            uid, key = view_sensor(view)
            shape = (1, 32, 32, 3) if key == "rgb" else (1, 32, 32, 1)
            data.setdefault(uid, {})[key] = torch.from_numpy(g.integers(0, 255 if key == "rgb" else 3000, shape))
        return {"sensor_data": data}

    def reset(self, seed: int):
        self.seed, self.t, self.actions = seed, 0, []
        self.instruction = ["pick up the cube", "pick up the small red cube on the left", "pick it"][seed - 10]
        self.target_name = "cube"
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.actions.append(np.asarray(action))
        info = {"success": self.seed == 10 and self.t == 3, "fail": self.seed == 11 and self.t == 5}
        return self._obs(), 0.0, False, False, info


@pytest.mark.parametrize("mode", ["tokens", "flow"])
def test_lockstep_episodes_match_one_env_at_a_time(tiny_checkpoint, mode, monkeypatch):
    """`run_episodes`: three episodes with prompts of different lengths, ending at different steps,
    stepped together with one model call per step (finished ones leave the batch; flow re-plans
    every execute_steps) are the episodes `run_episode` gives one at a time."""
    from sgvla.eval.policies import ModelPolicy
    from sgvla.eval.rollout import run_episode, run_episodes

    policy = ModelPolicy(str(tiny_checkpoint), mode=mode)
    seeds = [10, 11, 12]
    alone = []
    for s in seeds:
        env = _ScriptedEnv()
        alone.append((run_episode(env, policy, "pick", s, 7), env.actions))
    sizes = []
    predict = policy.model.predict_actions
    monkeypatch.setattr(policy.model, "predict_actions", lambda obs, *a, **k: sizes.append(len(obs)) or
                        predict(obs, *a, **k))
    envs = [_ScriptedEnv() for _ in seeds]
    together = run_episodes(envs, policy, "pick", seeds, 7)
    assert sizes == ([3, 3, 2, 1] if mode == "flow" else [3, 3, 3, 2, 2, 1, 1])
    assert [(r.success, r.steps, r.failure) for r in together] == [(True, 3, None), (False, 5, "fail"),
                                                                 (False, 7, "horizon")]
    for (one, actions), both, env in zip(alone, together, envs, strict=True):
        assert one == both
        np.testing.assert_allclose(np.stack(env.actions), np.stack(actions), rtol=0, atol=1e-5)


def test_noise_seed_draws_other_flow_noise_for_the_same_episode(tiny_checkpoint):
    """Draw 0 is the episode's own seed (reruns repeat); another draw changes the flow actions of the
    same episode and repeats too; token actions do not depend on it."""
    from sgvla.eval.policies import ModelPolicy
    from sgvla.eval.rollout import run_episode

    def actions(mode: str, draw: int) -> np.ndarray:
        env = _ScriptedEnv()
        run_episode(env, ModelPolicy(str(tiny_checkpoint), mode=mode, noise_seed=draw), "pick", 12, 4)
        return np.stack(env.actions)

    default = actions("flow", 0)
    np.testing.assert_array_equal(default, actions("flow", 0))
    other = actions("flow", 1)
    assert np.abs(other - default).max() > 1e-3
    np.testing.assert_array_equal(other, actions("flow", 1))
    assert not np.array_equal(actions("flow", 2), other)
    np.testing.assert_array_equal(actions("tokens", 0), actions("tokens", 5))


def test_batched_envs_give_the_episodes_of_one_env_at_a_time(tiny_checkpoint, tmp_path):
    """--batch-envs 2 in the simulator: two envs per worker stepped in lockstep, one model call per
    step; every episode (the chunk of two and the one left over) is the one it is when run alone,
    down to its video (greedy tokens: float rounding in the batch does not change an action)."""
    import imageio.v3 as iio

    kw = dict(model=str(tiny_checkpoint), task="mini_kitchen", subtask="pick", episodes=3, mode="tokens",
              max_steps=8, video=True, workers=1)
    one = run_eval(**kw, out=tmp_path / "k1")
    two = run_eval(**kw, out=tmp_path / "k2", batch_envs=2)
    assert one["batch_envs"] == 1 and two["batch_envs"] == 2

    def outcome(res):
        return [{k: v for k, v in e.items() if k != "video"} for e in res["episodes"]]

    assert outcome(two) == outcome(one) and [e["steps"] for e in one["episodes"]] == [8] * 3
    for e1, e2 in zip(one["episodes"], two["episodes"], strict=True):
        assert np.array_equal(iio.imread(e1["video"]), iio.imread(e2["video"])), e1["seed"]


def test_bad_input_fails_before_rollouts(tmp_path):
    runner = CliRunner()
    cases = [
        (["--model", "expert", "--episodes", "0"], "--episodes"),
        (["--model", "expert", "--task", "nope"], "unknown task"),
        (["--model", str(tmp_path / "missing")], "no such checkpoint"),
        (["--model", "expert", "--mode", "fast"], "--mode"),
        (["--model", "expert", "--task", "set_table"], "MS-HAB"),
        (["--model", "expert", "--workers", "-1"], "--workers"),
        (["--model", "expert", "--seed", "-1"], "--seed"),
        (["--model", "expert", "--split", "test"], "--split"),
        (["--model", "expert", "--token-decoding", "beam"], "--token-decoding"),
        (["--model", "expert", "--token-decoding", "expected"], "applies to a model loaded here"),
        (["--model", "expert", "--noise-seed", "-1"], "--noise-seed must be 0 or more"),
        (["--model", "random", "--noise-seed", "2"], "--noise-seed applies to a model loaded here"),
        (["--model", "expert", "--batch-envs", "0"], "--batch-envs must be at least 1"),
        (["--model", "random", "--batch-envs", "2"], "--batch-envs 2 batches the queries of a model loaded here"),
        (["--policy-server", "ws://127.0.0.1:9", "--batch-envs", "2"], "--model ws://127.0.0.1:9 has none"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, ["eval", *args, "--out", str(tmp_path / "o")])
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output and "Traceback" not in res.output, res.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    res = runner.invoke(app, ["eval", "--model", str(other), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not an SG-VLA checkpoint" in res.output, res.output
