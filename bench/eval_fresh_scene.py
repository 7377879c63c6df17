"""Cost of evaluating every built-in episode in a freshly built scene (what makes `sgvla eval`
repeat itself whatever the scheduling) against reusing one scene with plain resets (the old way).

The scripted expert runs the same val episodes in both envs, taking turns episode by episode so
that a machine whose load changes weighs on both alike; the fresh-scene rate is printed as a ratio
to the reused-scene rate measured in the same run. The expert asks no model, so this is the largest
share of an evaluation the rebuild can take (a model's forward passes only dilute it).

    .venv/bin/python bench/eval_fresh_scene.py [--subtask place] [--episodes 6] [--max-steps 120]
"""

from __future__ import annotations

import argparse
import time

from sgvla.envs import make_env
from sgvla.eval.policies import ExpertPolicy
from sgvla.eval.rollout import run_episode
from sgvla.eval.runner import FRESH_SCENE_EVERY_EPISODE
from sgvla.tasks import split_seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subtask", default="place")
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--max-steps", type=int, default=120)
    args = ap.parse_args()
    envs = {"reused scene": make_env(subtask=args.subtask, obs_mode="rgb+depth"),
            "fresh scene": make_env(subtask=args.subtask, obs_mode="rgb+depth", **FRESH_SCENE_EVERY_EPISODE)}
    for env in envs.values():  # first reset of each: scene build, shader compilation; not counted
        run_episode(env, ExpertPolicy(), args.subtask, split_seeds("dev", 0, 1)[0], 1)
    wall, steps = dict.fromkeys(envs, 0.0), dict.fromkeys(envs, 0)
    for seed in split_seeds("val", 0, args.episodes):
        for name, env in envs.items():
            t = time.perf_counter()
            steps[name] += run_episode(env, ExpertPolicy(), args.subtask, seed, args.max_steps).steps
            wall[name] += time.perf_counter() - t
    rate = {name: steps[name] / wall[name] for name in envs}
    for name in envs:
        print(f"{name:13s} {steps[name]:5d} steps in {wall[name]:6.1f} s  {rate[name]:6.1f} env steps/s")
    print(f"fresh / reused: {rate['fresh scene'] / rate['reused scene']:.3f} "
          f"({args.episodes} {args.subtask} val episodes, scripted expert, at most {args.max_steps} steps each)")


if __name__ == "__main__":
    main()
