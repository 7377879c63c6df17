"""Recorded frames/s of `sgvla gen` against ManiSkill's own `replay_trajectory`, same demos, same run.

    .venv/bin/python bench/gen_throughput.py [--demos DIR] [--subtask pick] [--episodes 4]

Baseline: `mani_skill.trajectory.replay_trajectory` with `--use-env-states`, the same observation
mode (RGB + depth + segmentation of both Fetch cameras) and nothing written - the cost of setting
states and rendering. Measured against it, on the same demo file:

* `core`: sgvla's replay loop (`Replayer` + label extraction + PNG encoding + Parquet/stats
  writing of every shard) in this process, one env - what one Ray worker does per shard;
* `run_gen 1 worker`: the whole command with one worker, Ray start-up and dataset card included;
* `run_gen 2 workers`: the same with two workers, for the 2-worker / 1-worker speed-up.

Both sides include one env construction (after a common warm-up that pays imports and renderer
start-up). Rounds are interleaved and the best time of each side counts, because the machine may
be shared. Prints frames/s and the ratios (target: core >= 0.9).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path


def warm_up(h5: Path, subtask: str) -> None:
    """Pay the one-off costs (imports, renderer start) before timing, so neither side carries them."""
    from sgvla.datagen.replay import make_replay_env
    from sgvla.datagen.sources import read_demo_file

    env = make_replay_env("mini_kitchen", read_demo_file(h5, subtask), num_envs=1, sim_backend="physx_cpu")
    env.reset(seed=0)
    env.close()


def baseline(h5: Path) -> float:
    """Seconds for ManiSkill's replay_trajectory --use-env-states over every episode of `h5`."""
    from mani_skill.trajectory import replay_trajectory as rt

    import sgvla.envs  # noqa: F401  (registers MiniKitchen*-v0 for replay_trajectory's gym.make)

    args = rt.Args(traj_path=str(h5), obs_mode="rgb+depth+segmentation", use_env_states=True,
                   sim_backend="physx_cpu", save_traj=False, allow_failure=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rt.main(args)
    return time.perf_counter() - t0


def core(h5: Path, subtask: str, out: Path) -> float:
    """Seconds for sgvla's worker code (one env) to replay and write every episode of `h5`."""
    from sgvla.datagen.plan import build_plan
    from sgvla.datagen.replay import Replayer
    from sgvla.datagen.sources import read_demo_file
    from sgvla.datagen.worker import replay_shard

    t0 = time.perf_counter()
    demo = read_demo_file(h5, subtask)
    plan = build_plan("mini_kitchen", "train", {subtask: [demo]}, 0, 1)
    rep = Replayer("mini_kitchen")
    for shard in plan:
        replay_shard(rep, out, shard)
    rep.close()
    return time.perf_counter() - t0


def full(demos: Path, subtask: str, out: Path, workers: int) -> float:
    from sgvla.datagen.pipeline import run_gen

    t0 = time.perf_counter()
    ok = run_gen(task="mini_kitchen", subtask=subtask, episodes=0, out=out, demos=demos, split="train",
                 workers=workers, ray_address=None, episodes_per_shard=1, overwrite=True)
    assert ok
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demos", type=Path, default=None, help="folder with <subtask>.h5 (default: generate)")
    ap.add_argument("--subtask", default="pick")
    ap.add_argument("--episodes", type=int, default=4, help="demos to generate when --demos is not given")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best time of each counts")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sgvla-bench-gen-"))
    try:
        demos = a.demos
        if demos is None:
            from sgvla.envs.demos import generate_demos

            demos = tmp / "demos"
            generate_demos(subtask=a.subtask, episodes=a.episodes, out=demos, seed=100, progress=False)
        h5 = demos / f"{a.subtask}.h5"
        from sgvla.datagen.sources import read_demo_file

        episodes = read_demo_file(h5, a.subtask).episodes
        frames, n_eps = sum(e.length for e in episodes), len(episodes)
        warm_up(h5, a.subtask)
        t_base = t_core = t_one = t_two = float("inf")
        for r in range(a.repeats):  # interleaved, best of each: the machine may be shared
            t_base = min(t_base, baseline(h5))
            t_core = min(t_core, core(h5, a.subtask, tmp / f"core{r}"))
            t_one = min(t_one, full(demos, a.subtask, tmp / "one", 1))
            t_two = min(t_two, full(demos, a.subtask, tmp / "two", 2))
        print(f"\n{n_eps} episodes, {frames} frames of mini_kitchen/{a.subtask}, obs rgb+depth+segmentation")
        rows = [("replay_trajectory --use-env-states (baseline)", t_base), ("sgvla core (1 env)", t_core),
                ("sgvla run_gen, 1 worker", t_one), ("sgvla run_gen, 2 workers", t_two)]
        for name, t in rows:
            print(f"  {name:48s} {t:7.1f} s  {frames / t:6.1f} frames/s")
        print(f"ratio core / baseline:             {t_base / t_core:.2f}  (target >= 0.9)")
        print(f"ratio run_gen 1 worker / baseline:  {t_base / t_one:.2f}  (includes Ray start-up)")
        print(f"speed-up 2 workers / 1 worker:      {t_one / t_two:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
