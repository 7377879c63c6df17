"""Speed of `sgvla eval`: the tiny SG-VLA model's share of the closed loop.

Runs the same pick episodes (same seeds, one Ray worker) driven by the scripted expert (no model)
and by a tiny random-init SG-VLA model in tokens and flow modes, and prints episodes/min and
env steps/s of each, with the model runs as a ratio to the expert run measured in the same process.

    .venv/bin/python bench/eval_speed.py [--episodes 4] [--max-steps 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def tiny_checkpoint(root: Path) -> Path:
    from sgvla.model import SGVLAConfig, SGVLAForActionPrediction

    stats = {k: [0.0] * 13 for k in ("mean", "std")}
    stats.update(min=[-1.0] * 13, max=[1.0] * 13, q01=[-1.0] * 13, q99=[1.0] * 13)
    cfg = SGVLAConfig.from_preset("tiny", views=["head_rgb", "hand_rgb", "head_depth", "hand_depth"],
                                  action_stats=stats, use_flow_expert=True)
    SGVLAForActionPrediction(cfg).save_pretrained(root / "model")
    return root / "model"


def main() -> None:
    import ray

    from sgvla.eval.runner import run_eval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=60)
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp))
        for name, model, mode in (("expert", "expert", "auto"), ("tiny/tokens", str(ckpt), "tokens"),
                                  ("tiny/flow", str(ckpt), "flow")):
            t = time.perf_counter()
            res = run_eval(model, "mini_kitchen", "pick", args.episodes, Path(tmp) / name.replace("/", "-"),
                           mode=mode, workers=1, max_steps=args.max_steps)
            dt = time.perf_counter() - t
            steps = sum(e["steps"] for e in res["episodes"])
            rows.append((name, args.episodes / dt * 60, steps / dt))
    ray.shutdown()
    base = rows[0]
    print(f"\n{'policy':<12} {'episodes/min':>12} {'steps/s':>8} {'steps/s ratio to expert':>24}")
    for name, epm, sps in rows:
        print(f"{name:<12} {epm:>12.1f} {sps:>8.1f} {sps / base[2]:>24.2f}")


if __name__ == "__main__":
    main()
