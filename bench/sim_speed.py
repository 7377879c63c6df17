"""Speed of the built-in scene: env steps/s of mini_kitchen against ManiSkill's PickCube-v1.

Both envs run Fetch with pd_joint_delta_pos, CPU physics and obs_mode rgb+depth+segmentation
(mini_kitchen renders Fetch's head and hand cameras; PickCube-v1 also its base camera), driven by
the same seeded random arm/gripper actions with the base held still. The two are measured in
alternating rounds in the same process, so a machine busy with other work slows both alike; the
figure is mini_kitchen's rate as a ratio to PickCube's (target >= 0.7).

    .venv/bin/python bench/sim_speed.py [--steps 100] [--rounds 3] [--subtask pick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

OBS_MODE = "rgb+depth+segmentation"


def make_envs(subtask: str):
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401  (registers PickCube-v1)

    from sgvla.envs import make_env

    ours = make_env(subtask=subtask, obs_mode=OBS_MODE)
    baseline = gym.make("PickCube-v1", robot_uids="fetch", obs_mode=OBS_MODE, control_mode="pd_joint_delta_pos",
                        sim_backend="physx_cpu")
    return ours, baseline


def steps_per_second(env, steps: int, seed: int) -> float:
    """Time `steps` env steps (after a reset and a short warm-up) with random arm actions."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    action = np.zeros(env.action_space.shape[-1], dtype=np.float32)
    for _ in range(3):
        env.step(action)
    t = time.perf_counter()
    for _ in range(steps):
        action[:8] = rng.uniform(-1, 1, size=8)  # arm + gripper; head, torso and base stay still
        env.step(action)
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="timed steps per env per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median is reported)")
    ap.add_argument("--subtask", default="pick")
    args = ap.parse_args()
    ours, baseline = make_envs(args.subtask)
    rates = {"mini_kitchen": [], "PickCube-v1": []}
    for r in range(args.rounds):
        rates["mini_kitchen"].append(steps_per_second(ours, args.steps, seed=r))
        rates["PickCube-v1"].append(steps_per_second(baseline, args.steps, seed=r))
    ours.close()
    baseline.close()
    med = {k: float(np.median(v)) for k, v in rates.items()}
    print(f"\n{'env (Fetch, ' + OBS_MODE + ')':<44} {'steps/s':>8}")
    print(f"{'mini_kitchen/' + args.subtask + ' (head + hand cameras)':<44} {med['mini_kitchen']:>8.1f}")
    print(f"{'PickCube-v1 (head + hand + base cameras)':<44} {med['PickCube-v1']:>8.1f}")
    print(f"ratio mini_kitchen / PickCube-v1: {med['mini_kitchen'] / med['PickCube-v1']:.2f} (target >= 0.7)")


if __name__ == "__main__":
    main()
