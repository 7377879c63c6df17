"""Speed of `sgvla eval`: the tiny SG-VLA model's share of the closed loop.

Runs the same pick episodes (same seeds) driven by the scripted expert (no model) and by a tiny
random-init SG-VLA model in tokens and flow modes, and prints episodes/min and env steps/s of each,
with the model runs as a ratio to the expert run measured in the same process. Each model run is
made twice in one worker, taking turns chunk by chunk: one env at a time (`--batch-envs 1`) and K
envs in lockstep with one batched model call per step (`sgvla eval --batch-envs K`), whose steps/s
is also printed as a ratio to K = 1 (the model's start-up includes building its K scenes).

Only steady-state episodes are timed: each policy runs in the `EvalWorker` that `sgvla eval`'s Ray
actors run, which loads the model and makes its envs once (each episode then rebuilds its scene, as
in `sgvla eval`; bench/eval_fresh_scene.py measures that share); that start-up and one warm-up
episode per env (seeds 1000.., not counted) are reported apart, because an evaluation of many
episodes pays them once while a short benchmark would otherwise be dominated by them.

    .venv/bin/python bench/eval_speed.py [--episodes 4] [--max-steps 60] [--batch-envs 4]
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


def measure(model: str, mode: str, out: Path, episodes: int, max_steps: int,
            batches: tuple[int, ...] = (1,)) -> tuple[float, dict[int, tuple[float, float]]]:
    """(start-up s, {K: (episodes/min, steps/s)}) of one policy in one worker, K envs in lockstep as
    `sgvla eval --batch-envs K` runs them (chunks of consecutive seeds); the rates over steady-state
    episodes only. The K settings take turns chunk by chunk, so that a machine whose load changes
    during the run (a CPU shared with other work) weighs on all of them alike."""
    from sgvla.eval.runner import EvalWorker, _obs_mode_for

    t = time.perf_counter()
    worker = EvalWorker("mini_kitchen", model, mode, str(out), False, _obs_mode_for(model)[0], max_steps)
    worker.run_batch("pick", [WARMUP_SEED + i for i in range(max(batches))])  # scenes, first forward passes
    startup = time.perf_counter() - t
    wall, steps = dict.fromkeys(batches, 0.0), dict.fromkeys(batches, 0)
    for first in range(0, episodes, max(batches)):
        seeds = list(range(first, min(first + max(batches), episodes)))
        for k in batches:
            t = time.perf_counter()
            for i in range(0, len(seeds), k):
                steps[k] += sum(r["steps"] for r in worker.run_batch("pick", seeds[i:i + k]))
            wall[k] += time.perf_counter() - t
    return startup, {k: (episodes / wall[k] * 60, steps[k] / wall[k]) for k in batches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--batch-envs", type=int, default=4, help="K of the batched model runs.")
    args = ap.parse_args()
    k = args.batch_envs
    if k < 2:
        ap.error(f"--batch-envs must be 2 or more to compare with 1 (got {k})")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp))
        for name, model, mode, batches in (("expert", "expert", "auto", (1,)),
                                           ("tiny/tokens", str(ckpt), "tokens", (1, k)),
                                           ("tiny/flow", str(ckpt), "flow", (1, k))):
            startup, rates = measure(model, mode, Path(tmp) / name.replace("/", "-"), args.episodes,
                                     args.max_steps, batches)
            rows += [(name + (f" x{b}" if b > 1 else ""), startup, *rates[b]) for b in batches]
    base = rows[0]
    print(f"\n{'policy':<15} {'start-up s':>10} {'episodes/min':>12} {'steps/s':>8} {'steps/s ratio to expert':>24}")
    for name, startup, epm, sps in rows:
        print(f"{name:<15} {startup:>10.1f} {epm:>12.1f} {sps:>8.1f} {sps / base[3]:>24.2f}")
    for mode in ("tokens", "flow"):
        one, many = (next(r[3] for r in rows if r[0] == f"tiny/{mode}{s}") for s in ("", f" x{k}"))
        print(f"tiny/{mode}: --batch-envs {k} gives {many / one:.2f}x the steps/s of --batch-envs 1")

if __name__ == "__main__":
    main()
