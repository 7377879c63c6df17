"""Speed of `sgvla eval`: the tiny SG-VLA model's share of the closed loop.

Runs the same pick episodes (same seeds) driven by the scripted expert (no model) and by a tiny
random-init SG-VLA model in tokens and flow modes, and prints episodes/min and env steps/s of each,
with the model runs as a ratio to the expert run measured in the same process.

Only steady-state episodes are timed: each policy runs in the `EvalWorker` that `sgvla eval`'s Ray
actors run, which loads the model and builds the scene once and reuses them; that start-up and one
warm-up episode (seed 1000, not counted) are reported apart, because an evaluation of many
episodes pays them once while a short benchmark would otherwise be dominated by them.

    .venv/bin/python bench/eval_speed.py [--episodes 4] [--max-steps 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

WARMUP_SEED = 1000


def tiny_checkpoint(root: Path) -> Path:
    from sgvla.model import SGVLAConfig, SGVLAForActionPrediction

    stats = {k: [0.0] * 13 for k in ("mean", "std")}
    stats.update(min=[-1.0] * 13, max=[1.0] * 13, q01=[-1.0] * 13, q99=[1.0] * 13)
    cfg = SGVLAConfig.from_preset("tiny", views=["head_rgb", "hand_rgb", "head_depth", "hand_depth"],
                                  action_stats=stats, use_flow_expert=True)
    SGVLAForActionPrediction(cfg).save_pretrained(root / "model")
    return root / "model"


def measure(model: str, mode: str, out: Path, episodes: int, max_steps: int) -> tuple[float, float, float]:
    """(start-up s, episodes/min, steps/s) of one policy; the rates over steady-state episodes only."""
    from sgvla.eval.runner import EvalWorker, _obs_mode_for

    t = time.perf_counter()
    worker = EvalWorker("mini_kitchen", model, mode, str(out), False, _obs_mode_for(model)[0], max_steps)
    worker.run("pick", WARMUP_SEED)  # builds the scene, first forward passes
    startup = time.perf_counter() - t
    wall = steps = 0.0
    for seed in range(episodes):
        t = time.perf_counter()
        steps += worker.run("pick", seed)["steps"]
        wall += time.perf_counter() - t
    return startup, episodes / wall * 60, steps / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=60)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp))
        for name, model, mode in (("expert", "expert", "auto"), ("tiny/tokens", str(ckpt), "tokens"),
                                  ("tiny/flow", str(ckpt), "flow")):
            out = Path(tmp) / name.replace("/", "-")
            rows.append((name, *measure(model, mode, out, args.episodes, args.max_steps)))
    base = rows[0]
    print(f"\n{'policy':<12} {'start-up s':>10} {'episodes/min':>12} {'steps/s':>8} {'steps/s ratio to expert':>24}")
    for name, startup, epm, sps in rows:
        print(f"{name:<12} {startup:>10.1f} {epm:>12.1f} {sps:>8.1f} {sps / base[3]:>24.2f}")


if __name__ == "__main__":
    main()
