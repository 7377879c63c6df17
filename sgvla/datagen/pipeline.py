"""`sgvla gen`: plan, replay on a Ray actor pool, write shards, summarise, finalise.

The driver does only cheap work: it checks every input (so a bad flag or file fails in a second,
before any simulator starts), computes the plan, and hands shards to a pool of `SimWorker` actors,
each owning a simulator it reuses across shards. Shards go preferably to an actor that just
replayed the same demo file (its scene is already built). A shard whose worker process dies is
retried on the restarted actor, at most `MAX_SHARD_ATTEMPTS` times; an error raised while
replaying fails that shard at once (it would fail again) and is named in the summary. Resuming is
re-running: finished shards are skipped, see `plan.py`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

import sgvla
from sgvla.datagen import mshab
from sgvla.datagen.plan import (
    ShardPlan,
    build_plan,
    load_plan,
    outcomes_path,
    read_plans,
    shard_done,
    store_plan,
)
from sgvla.datagen.sources import DemoFile, find_demo_files
from sgvla.dataset.atomic import write_json_atomic
from sgvla.dataset.layout import MANIFEST_PATH, PLAN_PATH, read_json
from sgvla.dataset.schema import SPLITS
from sgvla.errors import SgvlaError
from sgvla.tasks import BUILTIN_TASK, subtasks_for

MAX_SHARD_ATTEMPTS = 3
#: Episodes per subtask generated on the spot for the built-in task when --episodes is 0.
DEFAULT_BUILTIN_EPISODES = 10
DEMOS_DIR = ".demos"
DEMO_SEED = 0
#: Upper bound on sub-scenes of one vectorised GPU env (MS-HAB's own generator uses 252).
GPU_MAX_ENVS = 252


def _command_line(task, subtask, episodes, out, demos, split, workers, episodes_per_shard) -> str:
    parts = [f"sgvla gen --task {task} --subtask {subtask} --out {out} --split {split}"]
    if episodes:
        parts.append(f"--episodes {episodes}")
    if demos is not None:
        parts.append(f"--demos {demos}")
    if workers:
        parts.append(f"--workers {workers}")
    parts.append(f"--episodes-per-shard {episodes_per_shard}")
    return " ".join(parts)


def _check_args(split: str, episodes: int, workers: int, episodes_per_shard: int, out: Path) -> None:
    if split not in SPLITS:
        raise SgvlaError(f"unknown split {split!r} (--split): choose one of {', '.join(SPLITS)}")
    if episodes < 0:
        raise SgvlaError(f"--episodes {episodes} is negative: give a count per subtask, or 0 for all")
    if workers < 0:
        raise SgvlaError(f"--workers {workers} is negative: give a count, or 0 for one per core / GPU")
    if episodes_per_shard < 1:
        raise SgvlaError(f"--episodes-per-shard {episodes_per_shard} must be at least 1")
    if out.exists() and not out.is_dir():
        raise SgvlaError(f"--out {out} is a file: give a folder for the dataset")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to write into (or delete) a non-empty folder that is not an sgvla dataset."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    entries = [p for p in out.iterdir() if p.name != DEMOS_DIR]
    if entries and not (out / PLAN_PATH).exists():
        raise SgvlaError(f"--out {out} is not empty and holds no sgvla dataset ({PLAN_PATH}): choose a new "
                         "or empty folder")
    if overwrite:
        for p in entries:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _builtin_demos(out: Path, subtasks: tuple[str, ...], episodes: int) -> Path:
    """Expert demos for the built-in scene, generated once into `<out>/.demos` and reused."""
    from sgvla.envs.demos import generate_demos

    n = episodes or DEFAULT_BUILTIN_EPISODES
    root = out / DEMOS_DIR
    want = {"episodes": n, "seed": DEMO_SEED}
    for s in subtasks:
        marker = root / f".{s}.done.json"
        if read_json(marker) == want and (root / f"{s}.h5").is_file():
            continue
        tmp = root / f".tmp-{s}"
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"generating {n} expert demos for {BUILTIN_TASK}/{s} into {root}", file=sys.stderr)
        generate_demos(task=BUILTIN_TASK, subtask=s, episodes=n, out=tmp, seed=DEMO_SEED)
        for ext in (".json", ".h5"):
            os.replace(tmp / f"{s}{ext}", root / f"{s}{ext}")
        write_json_atomic(marker, want)
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _find_files(task: str, subtasks: tuple[str, ...], demos: Path | None, episodes: int,
                out: Path) -> dict[str, list[DemoFile]]:
    if task == BUILTIN_TASK:
        files = find_demo_files(demos if demos is not None else _builtin_demos(out, subtasks, episodes),
                                subtasks)
        for f in (f for fs in files.values() for f in fs):
            if not f.env_id.startswith("MiniKitchen"):
                raise SgvlaError(f"{f.path} was recorded in env {f.env_id}, not the {BUILTIN_TASK} scene "
                                 f"(MiniKitchen*-v0): pass demos of that scene or another --task")
        return files
    mshab.check_ready(task, subtasks)
    files = find_demo_files(demos if demos is not None else mshab.default_demos_dir(task), subtasks)
    for f in (f for fs in files.values() for f in fs):
        mshab.check_file(task, f)
    return files


def _start_ray(ray_address: str | None, workers: int) -> bool:
    """Join or start Ray; True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if ray_address:
        ray.init(address=ray_address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    return True


def _pool_shape(workers: int, n_todo: int, episodes_per_shard: int) -> dict:
    """Actors and their resources: one per GPU (vectorised env) if the cluster has GPUs, else per core."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        n = workers or gpus
        return {"n": max(1, min(n, n_todo)), "num_gpus": 1, "num_cpus": 1,
                "num_envs": min(episodes_per_shard, GPU_MAX_ENVS), "sim_backend": "physx_cuda"}
    n = workers or int(res.get("CPU", 1))
    return {"n": max(1, min(n, n_todo)), "num_gpus": 0, "num_cpus": 1, "num_envs": 1,
            "sim_backend": "physx_cpu"}


class _Progress:
    """Driver-side bar: frames (with rate and ETA) and episodes, fed by finished shards and the
    workers' per-episode reports."""

    def __init__(self, todo: list[ShardPlan]):
        self.total_eps = sum(len(s.episodes) for s in todo)
        self.done_frames = self.done_eps = 0
        self.counts: Counter = Counter()
        self.bar = tqdm(total=sum(s.frames for s in todo), unit="frame", desc="sgvla gen", dynamic_ncols=True,
                        mininterval=0.5, smoothing=0.1)

    def show(self, partial_frames: int = 0, partial_eps: int = 0) -> None:
        n = self.done_frames + partial_frames
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)
        eps = self.done_eps + partial_eps
        self.bar.set_postfix_str(f"episodes {eps}/{self.total_eps} kept {self.counts['kept']} "
                                 f"dropped {self.counts['dropped']} failed {self.counts['failed']}", refresh=False)

    def shard_finished(self, shard: ShardPlan, outcomes: list[dict] | None) -> None:
        self.done_frames += shard.frames
        self.done_eps += len(shard.episodes)
        for o in outcomes or [{"status": "failed"}] * len(shard.episodes):
            self.counts[o["status"]] += 1
        self.show()

    def close(self) -> None:
        self.bar.close()


def _next_shard(queue: list[ShardPlan], last_source: str | None) -> ShardPlan:
    """Prefer a shard of the file the actor replayed last (its env is built)."""
    for i, s in enumerate(queue):
        if s.source == last_source:
            return queue.pop(i)
    return queue.pop(0)


def _run_pool(root: Path, task: str, todo: list[ShardPlan], shape: dict) -> dict[int, str]:
    """Replay `todo` on an actor pool; returns {shard_index: error} for the shards that failed."""
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    from sgvla.datagen.worker import ProgressBoard, SimWorker

    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    cls = ray.remote(SimWorker).options(num_cpus=shape["num_cpus"], num_gpus=shape["num_gpus"],
                                        max_restarts=MAX_SHARD_ATTEMPTS * len(todo), max_task_retries=0)
    actors = [cls.remote(task, str(root), shape["num_envs"], shape["sim_backend"], board)
              for _ in range(shape["n"])]
    queue, idle = list(todo), list(range(len(actors)))
    last: dict[int, str | None] = defaultdict(lambda: None)
    attempts: Counter = Counter()
    inflight: dict = {}
    failed: dict[int, str] = {}
    progress = _Progress(todo)
    try:
        while queue or inflight:
            while idle and queue:
                a = idle.pop(0)
                shard = _next_shard(queue, last[a])
                attempts[shard.shard_index] += 1
                ref = actors[a].run_shard.remote(shard.to_json(), shard.config, shard.split, shard.num_shards,
                                                 attempts[shard.shard_index])
                inflight[ref] = (a, shard)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                a, shard = inflight.pop(ref)
                idle.append(a)
                last[a] = shard.source
                try:
                    res = ray.get(ref)
                    progress.shard_finished(shard, res["outcomes"])
                except (RayActorError, ActorUnavailableError) as e:
                    last[a] = None
                    if attempts[shard.shard_index] < MAX_SHARD_ATTEMPTS:
                        tqdm.write(f"worker died on shard {shard.relpath} (attempt "
                                   f"{attempts[shard.shard_index]}/{MAX_SHARD_ATTEMPTS}); retrying")
                        queue.insert(0, shard)
                    else:
                        failed[shard.shard_index] = f"worker died {MAX_SHARD_ATTEMPTS} times: {_first_line(e)}"
                        progress.shard_finished(shard, None)
                except RayTaskError as e:
                    failed[shard.shard_index] = _first_line(getattr(e, "cause", None) or e)
                    tqdm.write(f"shard {shard.relpath} failed: {failed[shard.shard_index]}")
                    progress.shard_finished(shard, None)
            snap = ray.get(board.snapshot.remote())
            live = {s.shard_index: attempts[s.shard_index] for _, s in inflight.values()}
            pf = sum(v[1] for k, v in snap.items() if live.get(k) == v[0])
            pe = sum(v[2] for k, v in snap.items() if live.get(k) == v[0])
            progress.show(pf, pe)
    finally:
        progress.close()
        for actor in actors:
            ray.kill(actor)
        ray.kill(board)
    return failed


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[-1] if text else type(e).__name__
    return f"{type(e).__name__}: {msg}"[:300]


def _manifest(root: Path, command_line: str, errors: dict[tuple[str, str, int], str]) -> dict:
    """Every planned episode of the folder: kept / dropped (reason) / failed (not produced yet)."""
    kept, dropped, failed, sources = [], [], [], set()
    for key in read_plans(root):
        config, split = key.split("/")
        for s in load_plan(root, config, split) or []:
            sources.add(s.source)
            if shard_done(root, s):
                for o in read_json(outcomes_path(root, config, split, s.shard_index))["episodes"]:
                    o = {"config": config, "split": split, **o}
                    (kept if o["status"] == "kept" else dropped).append(o)
                continue
            why = errors.get((config, split, s.shard_index), "not produced yet: re-run the same command")
            for e in s.episodes:
                failed.append({"config": config, "split": split, "episode_index": e.episode_index,
                               "subtask": e.subtask, "source": f"{e.source}:{e.traj}", "status": "failed",
                               "reason": why})
    return {"command_line": command_line, "sgvla_version": sgvla.__version__, "sources": sorted(sources),
            "kept": kept, "dropped": dropped, "failed": failed}


def _summary(manifest: dict, config: str, split: str) -> str:
    mine = {k: [e for e in manifest[k] if e["config"] == config and e["split"] == split]
            for k in ("kept", "dropped", "failed")}
    lines = [f"{config}/{split}: kept {len(mine['kept'])} episodes "
             f"({sum(e['length'] for e in mine['kept'])} frames), dropped {len(mine['dropped'])}, "
             f"failed {len(mine['failed'])}"]
    for reason, n in Counter(e["reason"].split(" at step")[0] for e in mine["dropped"]).most_common():
        lines.append(f"  dropped {n}: {reason}")
    by_file = Counter((e["source"].rsplit(":", 1)[0], e["reason"]) for e in mine["failed"])
    for (src, reason), n in by_file.most_common():
        lines.append(f"  failed {n} from {src}: {reason}")
    return "\n".join(lines)


def run_gen(task: str, subtask: str, episodes: int, out: Path, demos: Path | None, split: str,
            workers: int, ray_address: str | None, episodes_per_shard: int, overwrite: bool) -> bool:
    """Record the dataset (see the module docstring); True when no episode failed."""
    out = Path(out)
    subtasks = subtasks_for(task, subtask)
    _check_args(split, episodes, workers, episodes_per_shard, out)
    _prepare_out(out, overwrite)
    files = _find_files(task, subtasks, Path(demos) if demos is not None else None, episodes, out)
    plan = build_plan(task, split, files, episodes, episodes_per_shard)
    store_plan(out, task, split, plan)
    todo = [s for s in plan if not shard_done(out, s)]
    command_line = _command_line(task, subtask, episodes, out, demos, split, workers, episodes_per_shard)
    errors: dict[tuple[str, str, int], str] = {}
    t0 = time.time()
    if todo:
        print(f"{task}/{split}: {len(plan) - len(todo)} of {len(plan)} shards already done, "
              f"{len(todo)} to go", file=sys.stderr)
        import ray

        started = _start_ray(ray_address, workers)
        try:
            shape = _pool_shape(workers, len(todo), episodes_per_shard)
            failed = _run_pool(out, task, todo, shape)
            errors = {(task, split, i): why for i, why in failed.items()}
        finally:
            if started:
                ray.shutdown()
    manifest = _manifest(out, command_line, errors)
    write_json_atomic(out / MANIFEST_PATH, manifest)
    from sgvla.dataset.finalize import finalize_dataset

    finalize_dataset(out, command_line, manifest["sources"])
    print(_summary(manifest, task, split) + f"  [{time.time() - t0:.0f} s]", file=sys.stderr)
    return not any(e["config"] == task and e["split"] == split for e in manifest["failed"])
