"""`sgvla gen`: plan, replay on a Ray actor pool, write shards, summarise, finalise.

The driver does only cheap work: it checks every input (so a bad flag or file fails in a second,
before any simulator starts), computes the plan, and hands shards to a pool of `SimWorker` actors,
each owning a simulator it reuses across shards. Shards go preferably to an actor that just
replayed the same demo file (its scene is already built). A shard whose worker process dies is
retried on the restarted actor, at most `MAX_SHARD_ATTEMPTS` times; an error raised while
replaying fails that shard at once (it would fail again) and is named in the summary. Resuming is
re-running: finished shards are skipped, see `plan.py`.

CPU vs GPU: on a cluster without GPUs there is one actor per core, each with one CPU-PhysX env
(`num_envs=1`). When the cluster has GPUs (`_pool_shape`), there is one actor per GPU, each with
one vectorised env (`num_envs = min(--episodes-per-shard, 252)`, GPU PhysX and rendering) that
replays a whole shard as one batch - so on GPU nodes choose `--episodes-per-shard` near the batch
size you want. The replay code is the same for both (see `replay.py`); the GPU branch has not
been run on this project's CPU-only machines.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

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
from sgvla.datagen.sources import DemoFile, check_demo_actions, find_demo_files
from sgvla.dataset.atomic import folder_lock, write_json_atomic
from sgvla.dataset.layout import MANIFEST_PATH, PLAN_PATH, find_shards, read_json
from sgvla.dataset.schema import source_name
from sgvla.errors import SgvlaError
from sgvla.provenance import software
from sgvla.raysession import RaySession
from sgvla.tasks import BUILTIN_TASK, SPLITS, split_of_seed, subtasks_for

MAX_SHARD_ATTEMPTS = 3
#: Episodes per subtask generated on the spot for the built-in task when --episodes is 0.
DEFAULT_BUILTIN_EPISODES = 10
DEMOS_DIR = ".demos"
DEMO_SEED = 0
#: Upper bound on sub-scenes of one vectorised GPU env (MS-HAB's own generator uses 252).
GPU_MAX_ENVS = 252
#: Memory (GiB) Ray reserves per simulator actor unless `--worker-memory` says otherwise, so that a
#: node runs only as many actors as its memory holds. mini_kitchen: ~1.2 GiB resident measured per
#: actor (one cached env, 128-px cameras); MS-HAB: an estimate (ReplicaCAD scene + YCB + the cached
#: env; never measured here, no assets), GPU: the vectorised env's host side.
WORKER_MEMORY_GIB = {"builtin": 2.0, "mshab_cpu": 6.0, "mshab_gpu": 16.0}


def _portable(path) -> str:
    """A path as the card and manifest publish it: relative as given, an absolute one by its name
    (the folders of the machine that generated a dataset mean nothing to its readers)."""
    p = Path(path)
    return p.name if p.is_absolute() else str(p)


def _command_line(task, subtask, episodes, out, demos, split, workers, episodes_per_shard) -> str:
    parts = [f"sgvla gen --task {task} --subtask {subtask} --out {_portable(out)} --split {split}"]
    if episodes:
        parts.append(f"--episodes {episodes}")
    if demos is not None:
        parts.append(f"--demos {_portable(demos)}")
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


def _generate_one(subtask: str, n: int, root: Path, split: str) -> None:
    """Record one subtask's demos under a temporary name, then move them into `root`."""
    from sgvla.envs.demos import generate_demos

    tmp = root / f".tmp-{subtask}"
    shutil.rmtree(tmp, ignore_errors=True)
    generate_demos(task=BUILTIN_TASK, subtask=subtask, episodes=n, out=tmp, seed=DEMO_SEED, progress=False,
                   split=split)
    for ext in (".json", ".h5"):
        os.replace(tmp / f"{subtask}{ext}", root / f"{subtask}{ext}")
    write_json_atomic(root / f".{subtask}.done.json", {"episodes": n, "seed": DEMO_SEED, "split": split})
    shutil.rmtree(tmp, ignore_errors=True)


def _builtin_demos(out: Path, subtasks: tuple[str, ...], episodes: int, session: RaySession,
                   split: str) -> Path:
    """Expert demos of `split`'s episodes for the built-in scene, generated once into `<out>/.demos`
    (val ones into `.demos/val`) and reused; several subtasks are recorded in parallel as Ray tasks."""
    n = episodes or DEFAULT_BUILTIN_EPISODES
    root = out / DEMOS_DIR if split == "train" else out / DEMOS_DIR / split
    root.mkdir(parents=True, exist_ok=True)
    want = {"episodes": n, "seed": DEMO_SEED, "split": split}
    todo = [s for s in subtasks
            if read_json(root / f".{s}.done.json") != want or not (root / f"{s}.h5").is_file()]
    if not todo:
        return root
    print(f"generating {n} expert demos per subtask ({', '.join(todo)}) into {root}", file=sys.stderr)
    if len(todo) == 1:
        _generate_one(todo[0], n, root, split)
        return root
    import ray
    from ray.exceptions import RayTaskError

    session.start()
    task = ray.remote(num_cpus=1, max_retries=1)(_generate_one)
    try:
        ray.get([task.remote(s, n, root, split) for s in todo])
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        raise (cause if isinstance(cause, SgvlaError) else e) from None
    return root


def _find_files(task: str, subtasks: tuple[str, ...], demos: Path | None, episodes: int,
                out: Path, session: RaySession, split: str) -> dict[str, list[DemoFile]]:
    if task == BUILTIN_TASK:
        if demos is None:
            demos = _builtin_demos(out, subtasks, episodes, session, split)
        files = find_demo_files(demos, subtasks)
        for f in (f for fs in files.values() for f in fs):
            if not f.env_id.startswith("MiniKitchen"):
                raise SgvlaError(f"{f.path} was recorded in env {f.env_id}, not the {BUILTIN_TASK} scene "
                                 f"(MiniKitchen*-v0): pass demos of that scene or another --task")
            check_demo_actions(f)
        return files
    mshab.check_ready(task, subtasks)
    files = find_demo_files(demos if demos is not None else mshab.default_demos_dir(task), subtasks)
    for f in (f for fs in files.values() for f in fs):
        mshab.check_file(task, f)
        check_demo_actions(f)
    return files


def _pool_shape(workers: int, n_todo: int, episodes_per_shard: int, task: str = BUILTIN_TASK,
                worker_memory: float | None = None) -> dict:
    """Actors and their resources: one per GPU (vectorised env) if the cluster has GPUs, else per core;
    each reserves `worker_memory` GiB (default `WORKER_MEMORY_GIB`), and no more actors start than
    the cluster's memory holds."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        shape = {"n": workers or gpus, "num_gpus": 1, "num_cpus": 1,
                 "num_envs": min(episodes_per_shard, GPU_MAX_ENVS), "sim_backend": "physx_cuda"}
    else:
        shape = {"n": workers or int(res.get("CPU", 1)), "num_gpus": 0, "num_cpus": 1, "num_envs": 1,
                 "sim_backend": "physx_cpu"}
    kind = "builtin" if task == BUILTIN_TASK else ("mshab_gpu" if gpus else "mshab_cpu")
    gib = WORKER_MEMORY_GIB[kind] if worker_memory is None else worker_memory
    shape["memory"] = int(gib * 2**30)
    fits = int(res.get("memory", 0) // shape["memory"])
    if fits < 1:
        raise SgvlaError(f"one simulator worker reserves {gib:g} GiB but the Ray cluster offers "
                         f"{res.get('memory', 0) / 2**30:.1f} GiB: lower --worker-memory or add memory")
    if fits < shape["n"]:
        print(f"note: {shape['n']} workers at {gib:g} GiB each do not fit the cluster's "
              f"{res['memory'] / 2**30:.1f} GiB of memory: starting {fits} (--worker-memory sets the reservation)")
    shape["n"] = max(1, min(shape["n"], fits, n_todo))
    return shape


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

    def close(self) -> None:
        self.bar.close()


def _next_shard(queue: list[ShardPlan], last_source: str | None) -> ShardPlan:
    """Prefer a shard of the file the actor replayed last (its env is built)."""
    for i, s in enumerate(queue):
        if s.source == last_source:
            return queue.pop(i)
    return queue.pop(0)


class _Pool:
    """Hands shards to actors, retries crashed ones (bounded), feeds the progress bar.

    After a worker process dies, Ray restarts its actor; until the restarted actor answers a
    ping it gets no work (calls made while it restarts fail without running and must not use up
    a shard's attempts).
    """

    #: seconds between pings of an actor that Ray reports as still restarting
    PING_EVERY_S = 1.0

    def __init__(self, actors: list, board, todo: list[ShardPlan]):
        self.actors, self.board = actors, board
        self.queue, self.idle = list(todo), list(range(len(actors)))
        self.cooling: dict[int, float] = {}
        self.pings: dict = {}
        self.dead: set[int] = set()
        self.last: dict[int, str | None] = defaultdict(lambda: None)
        self.attempts: Counter = Counter()
        self.inflight: dict = {}
        self.failed: dict[int, str] = {}
        self.progress = _Progress(todo)

    def _ping(self, a: int) -> None:
        self.pings[self.actors[a].pid.remote()] = a

    def _submit(self) -> None:
        now = time.time()
        for a, until in list(self.cooling.items()):
            if until <= now:
                del self.cooling[a]
                self._ping(a)
        while self.idle and self.queue:
            a = self.idle.pop(0)
            shard = _next_shard(self.queue, self.last[a])
            self.attempts[shard.shard_index] += 1
            ref = self.actors[a].run_shard.remote(shard.to_json(), shard.config, shard.split, shard.num_shards,
                                                  self.attempts[shard.shard_index])
            self.inflight[ref] = (a, shard)

    def _fail(self, shard: ShardPlan, why: str) -> None:
        self.failed[shard.shard_index] = why
        tqdm.write(f"shard {shard.relpath} failed: {why}")
        self.progress.shard_finished(shard, None)

    def _pong(self, ref) -> None:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        a = self.pings.pop(ref)
        try:
            ray.get(ref)
            self.idle.append(a)
        except ActorUnavailableError:
            self.cooling[a] = time.time() + self.PING_EVERY_S
        except RayActorError:  # out of restarts
            self.dead.add(a)

    def _collect(self, ref) -> None:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        a, shard = self.inflight.pop(ref)
        i = shard.shard_index
        try:
            res = ray.get(ref)
        except (RayActorError, ActorUnavailableError) as e:  # the worker process died
            self.last[a] = None
            self._ping(a)
            if self.attempts[i] < MAX_SHARD_ATTEMPTS:
                tqdm.write(f"worker died on shard {shard.relpath} (attempt {self.attempts[i]}/"
                           f"{MAX_SHARD_ATTEMPTS}); retrying")
                self.queue.insert(0, shard)
            else:
                self._fail(shard, f"worker died {MAX_SHARD_ATTEMPTS} times: {_first_line(e)}")
            return
        except RayTaskError as e:  # an error in the replay itself: it would fail again
            self.idle.append(a)
            self._fail(shard, _first_line(getattr(e, "cause", None) or e))
            return
        self.idle.append(a)
        self.last[a] = shard.source
        self.progress.shard_finished(shard, res["outcomes"])

    def _show(self) -> None:
        import ray

        snap = ray.get(self.board.snapshot.remote())
        live = {s.shard_index: self.attempts[s.shard_index] for _, s in self.inflight.values()}
        mine = [v for k, v in snap.items() if live.get(k) == v[0]]
        self.progress.show(sum(v[1] for v in mine), sum(v[2] for v in mine))

    def run(self) -> dict[int, str]:
        import ray

        try:
            while self.queue or self.inflight:
                if len(self.dead) == len(self.actors):
                    for shard in self.queue:
                        self._fail(shard, "every worker is gone (out of restarts)")
                    break
                self._submit()
                waiting = list(self.inflight) + list(self.pings)
                if not waiting:  # every live actor is cooling down
                    time.sleep(0.2)
                    continue
                ready, _ = ray.wait(waiting, num_returns=1, timeout=0.5)
                for ref in ready:
                    if ref in self.pings:
                        self._pong(ref)
                    else:
                        self._collect(ref)
                self._show()
        finally:
            self.progress.close()
        return self.failed


def _run_pool(root: Path, task: str, todo: list[ShardPlan], shape: dict) -> dict[int, str]:
    """Replay `todo` on an actor pool; returns {shard_index: error} for the shards that failed."""
    import ray

    from sgvla.datagen.worker import ProgressBoard, SimWorker

    board_name = f"sgvla-gen-progress-{uuid.uuid4().hex[:12]}"
    board = ray.remote(num_cpus=0)(ProgressBoard).options(name=board_name).remote()
    extra = {} if task == BUILTIN_TASK else {"runtime_env": mshab.worker_runtime_env()}
    cls = ray.remote(SimWorker).options(num_cpus=shape["num_cpus"], num_gpus=shape["num_gpus"], memory=shape["memory"],
                                        max_restarts=MAX_SHARD_ATTEMPTS * len(todo), max_task_retries=0,
                                        scheduling_strategy="SPREAD", **extra)  # over the cluster's nodes
    actors = [cls.remote(task, str(root), shape["num_envs"], shape["sim_backend"], board_name)
              for _ in range(shape["n"])]
    try:
        return _Pool(actors, board, todo).run()
    finally:
        for actor in actors:
            ray.kill(actor)
        ray.kill(board)


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
            sources.add(source_name(s.source))
            if shard_done(root, s):
                for o in read_json(outcomes_path(root, config, split, s.shard_index))["episodes"]:
                    path, traj = o["source"].rsplit(":", 1)
                    o = {"config": config, "split": split, **o, "source": f"{source_name(path)}:{traj}"}
                    (kept if o["status"] == "kept" else dropped).append(o)
                continue
            why = errors.get((config, split, s.shard_index), "not produced yet: re-run the same command")
            for e in s.episodes:
                failed.append({"config": config, "split": split, "episode_index": e.episode_index,
                               "subtask": e.subtask, "source": f"{source_name(e.source)}:{e.traj}",
                               "status": "failed",
                               "reason": why})
    return {"command_line": command_line, "software": software(),
            "sources": sorted(sources), "kept": kept, "dropped": dropped, "failed": failed}


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


def _check_split_seeds(task: str, split: str, files: dict[str, list[DemoFile]]) -> None:
    """Built-in scene: every demo's reset seed must lie in `split`'s seed range, so a val
    episode can never end up in a train dataset (or the other way round)."""
    if task != BUILTIN_TASK:
        return
    for demo_files in files.values():
        for f in demo_files:
            for e in f.episodes:
                seed = e.reset_kwargs.get("seed")
                if isinstance(seed, int) and split_of_seed(seed) != split:
                    raise SgvlaError(f"{f.path} {e.traj} has reset seed {seed}, which belongs to the "
                                     f"{split_of_seed(seed) or 'no'} split, not --split {split}: record "
                                     f"{split} demos with `sgvla demos --split {split}`")


def run_gen(task: str, subtask: str, episodes: int, out: Path, demos: Path | None, split: str,
            workers: int, ray_address: str | None, episodes_per_shard: int, overwrite: bool,
            worker_memory: float | None = None) -> bool:
    """Record the dataset (see the module docstring); True when no episode failed. `worker_memory`:
    GiB Ray reserves per simulator actor (None: `WORKER_MEMORY_GIB`)."""
    out = Path(out)
    subtasks = subtasks_for(task, subtask)
    _check_args(split, episodes, workers, episodes_per_shard, out)
    if worker_memory is not None and worker_memory <= 0:
        raise SgvlaError(f"--worker-memory must be a positive number of GiB (got {worker_memory})")
    with folder_lock(out, "`sgvla gen`"):
        return _run_gen(task, subtask, subtasks, episodes, out, demos, split, workers, ray_address,
                        episodes_per_shard, overwrite, worker_memory)


def _run_gen(task: str, subtask: str, subtasks: tuple[str, ...], episodes: int, out: Path, demos: Path | None,
             split: str, workers: int, ray_address: str | None, episodes_per_shard: int, overwrite: bool,
             worker_memory: float | None = None) -> bool:
    fresh = not out.exists()
    _prepare_out(out, overwrite)
    session = RaySession(ray_address, num_cpus=max(workers, os.cpu_count() or 1))
    errors: dict[tuple[str, str, int], str] = {}
    t0 = time.time()
    try:
        files = _find_files(task, subtasks, Path(demos) if demos is not None else None, episodes, out, session,
                            split)
        _check_split_seeds(task, split, files)
        plan = build_plan(task, split, files, episodes, episodes_per_shard)
        store_plan(out, task, split, plan)
    except SgvlaError:
        session.close()
        if fresh and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave nothing behind for a run that never started
        raise
    try:
        todo = [s for s in plan if not shard_done(out, s)]
        for s in todo:
            if (out / s.relpath).is_file():
                print(f"note: {out / s.relpath} is incomplete or from another plan: rebuilding it", file=sys.stderr)
        if todo:
            print(f"{task}/{split}: {len(plan) - len(todo)} of {len(plan)} shards already done, "
                  f"{len(todo)} to go", file=sys.stderr)
            session.start()
            shape = _pool_shape(workers, len(todo), episodes_per_shard, task, worker_memory)
            failed = _run_pool(out, task, todo, shape)
            errors = {(task, split, i): why for i, why in failed.items()}
    finally:
        session.close()
    command_line = _command_line(task, subtask, episodes, out, demos, split, workers, episodes_per_shard)
    manifest = _manifest(out, command_line, errors)
    write_json_atomic(out / MANIFEST_PATH, manifest)
    if find_shards(out):  # nothing to describe when every shard failed
        from sgvla.dataset.finalize import finalize_dataset

        finalize_dataset(out, command_line, manifest["sources"])
    print(_summary(manifest, task, split) + f"  [{time.time() - t0:.0f} s]", file=sys.stderr)
    return not any(e["config"] == task and e["split"] == split for e in manifest["failed"])
