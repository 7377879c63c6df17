"""`sgvla eval`: closed-loop success rates, episodes spread over Ray workers.

Each worker owns simulators (`--batch-envs` K per subtask) and one copy of the policy, made once
and reused for all its episodes (an MS-HAB scene costs seconds to build; the small built-in scene
is rebuilt for every episode, `FRESH_SCENE_EVERY_EPISODE`). With K > 1 a worker runs K
episodes in lockstep and asks the model for all of them in one batched call per step (a GPU's worth
of work instead of a batch of one); the jobs are fixed chunks of K consecutive seeds of a subtask,
and a finished episode leaves its chunk's batch rather than taking the next seed, so which episodes
share a batch never depends on scheduling. A batched row equals a single call up to float rounding:
greedy tokens give the same episodes, while flow and expected decoding can drift apart by that
rounding through the closed loop (compare such results at one K).

Episode i of a subtask is episode seed + i of the split: on the built-in scene the val split's
reset seeds never meet the train split's that `sgvla demos` records (`sgvla.tasks.split_seeds`);
MS-HAB evaluates on its own val scenes. Every
source of randomness in the policy is seeded from the episode, and on the built-in scene every
episode starts in a freshly built scene (`FRESH_SCENE_EVERY_EPISODE`), so a rerun gives the same
episodes whatever the number of workers or the order in which they take their jobs.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from sgvla.errors import SgvlaError
from sgvla.eval.policies import REPLAY_PREFIX, first_demo_actions, is_reference, is_server
from sgvla.eval.report import aggregate, markdown_table, write_results
from sgvla.hub import names_hub_repo
from sgvla.provenance import software
from sgvla.raysession import RaySession
from sgvla.tasks import BUILTIN_TASK, split_seeds, subtasks_for
from sgvla.vocab import VIEWS, view_kind  # what every env family renders: both cameras, RGB and depth

MODES = ("tokens", "flow", "auto")


class EvalWorker:
    """Owns simulators (per subtask, as many as its largest batch, lazily built) and a policy; runs
    episodes on request."""

    def __init__(self, task: str, model: str, mode: str, out: str, video: bool, obs_mode: str,
                 max_steps: int | None = None, use_gpu: bool = False, token_decoding: str | None = None,
                 noise_seed: int = 0):
        import torch

        from sgvla.eval.policies import make_policy

        self.task, self.out, self.video, self.obs_mode = task, Path(out), video, obs_mode
        self.max_steps = max_steps
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES
        if device == "cpu":
            torch.set_num_threads(1)  # the actor's one CPU: torch's own pool would span the machine
        self.policy = make_policy(model, mode, device, token_decoding, noise_seed)
        self.envs: dict[str, list] = {}

    def _envs(self, subtask: str, n: int) -> list:
        envs = self.envs.setdefault(subtask, [])
        while len(envs) < n:
            envs.append(make_eval_env(self.task, subtask, self.obs_mode))
        return envs[:n]

    def run_batch(self, subtask: str, seeds: list[int]) -> list[dict]:
        """The records of `seeds`' episodes, run in lockstep on one env each (one alone: `run_episode`)."""
        from mani_skill.utils.gym_utils import find_max_episode_steps_value

        from sgvla.eval.mshab_env import HORIZON
        from sgvla.eval.rollout import run_episode, run_episodes

        envs = self._envs(subtask, len(seeds))
        horizon = self.max_steps or find_max_episode_steps_value(envs[0]) or HORIZON
        videos = [self.out / "videos" / f"{subtask}-seed{s}.mp4" if self.video else None for s in seeds]
        if len(seeds) == 1:
            return [run_episode(envs[0], self.policy, subtask, seeds[0], horizon, videos[0]).to_dict()]
        return [r.to_dict() for r in run_episodes(envs, self.policy, subtask, list(seeds), horizon, videos)]


#: The built-in scene is rebuilt at every reset (ManiSkill's `reconfiguration_freq`): PhysX keeps
#: contact and solver state across a plain reset, so an episode's trajectory would depend on which
#: episodes its worker ran before, and that on scheduling (the scripted expert's place trajectory
#: moved by 0.001-0.004 rad from its first step after other episodes). A rebuild costs about 0.2 s:
#: 4% of the scripted expert's evaluation time, less with a model (bench/eval_fresh_scene.py).
#: MS-HAB's apartments take seconds to build and are not rebuilt.
FRESH_SCENE_EVERY_EPISODE = {"reconfiguration_freq": 1}


def make_eval_env(task: str, subtask: str, obs_mode: str):
    """The built-in scene, or MS-HAB's {Subtask}SubtaskTrain-v0 (val split) when mshab is installed."""
    if task == BUILTIN_TASK:
        from sgvla.envs import make_env

        return make_env(task, subtask, obs_mode=obs_mode, **FRESH_SCENE_EVERY_EPISODE)
    from sgvla.eval.mshab_env import make_mshab_env

    return make_mshab_env(task, subtask, obs_mode=obs_mode)


def _check_inputs(model: str, task: str, subtask: str, episodes: int, out: Path, mode: str,
                  workers: int) -> tuple[str, ...]:
    subs = subtasks_for(task, subtask)
    if episodes <= 0:
        raise SgvlaError(f"--episodes must be at least 1 (got {episodes})")
    if workers < 0:
        raise SgvlaError(f"--workers must be 0 (one per CPU core) or more (got {workers})")
    if mode not in MODES:
        raise SgvlaError(f"unknown --mode {mode!r}: choose one of {', '.join(MODES)}")
    if out.exists() and not out.is_dir():
        raise SgvlaError(f"--out {out} is a file: give a folder for results.json, results.md and videos")
    try:  # now, not after the rollouts: a path that cannot be written must not cost an evaluation
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SgvlaError(f"--out {out} cannot be created ({e.strerror or e}): give a writable folder") from None
    if model.startswith(REPLAY_PREFIX):
        for sub in subs:  # fail before any worker starts, naming the missing file
            first_demo_actions(Path(model[len(REPLAY_PREFIX):]), sub)
    elif not is_reference(model) and not is_server(model) and not Path(model).exists() and not names_hub_repo(model):
        raise SgvlaError(f"--model {model}: no such checkpoint or run folder, nor a Hub repo id USER/NAME (or "
                         "use 'expert', 'random' or 'replay:DEMOS')")
    if task != BUILTIN_TASK:
        from sgvla.eval.mshab_env import require_mshab

        require_mshab(task, subs)
    return subs


def _check_token_decoding(model: str, token_decoding: str | None) -> None:
    """--token-decoding is a setting of a loaded SG-VLA model: name what it cannot apply to."""
    from sgvla.model.configuration_sgvla import TOKEN_DECODINGS

    if token_decoding is None:
        return
    if token_decoding not in TOKEN_DECODINGS:
        raise SgvlaError(f"unknown --token-decoding {token_decoding!r}: choose one of {', '.join(TOKEN_DECODINGS)}")
    if is_reference(model) or is_server(model):
        raise SgvlaError(f"--token-decoding applies to a model loaded here, not to --model {model} (a served "
                         "model decodes as its config says)")


def _check_noise_seed(model: str, noise_seed: int) -> None:
    """--noise-seed picks the flow-noise draw of a model loaded here; 0 is the default draw."""
    if noise_seed < 0:
        raise SgvlaError(f"--noise-seed must be 0 or more (got {noise_seed})")
    if noise_seed and (is_reference(model) or is_server(model)):
        raise SgvlaError(f"--noise-seed applies to a model loaded here, not to --model {model} (a served model "
                         "draws its own noise; the references draw none)")


def _check_batch_envs(model: str, batch_envs: int) -> None:
    """K > 1 batches the queries of a model loaded here; the references ask no model, and a served
    model answers one observation at a time, so for them it would only cost K scenes per worker."""
    if batch_envs < 1:
        raise SgvlaError(f"--batch-envs must be at least 1 (got {batch_envs})")
    if batch_envs > 1 and (is_reference(model) or is_server(model)):
        raise SgvlaError(f"--batch-envs {batch_envs} batches the queries of a model loaded here; --model {model} "
                         "has none to batch: leave it at 1 and use --workers for parallel episodes")


def _obs_mode_for(model: str) -> tuple[str, list[str]]:
    """Render only what the policy needs; a model's views are checked against the env before any rollout."""
    if is_reference(model):
        return "rgb+depth+segmentation", []
    if is_server(model):  # the server checked its own model when it loaded it; ask it what it reads
        from sgvla.eval.policies import ServerConnection

        conn = ServerConnection(model)
        views = list(conn.meta["views"])
        conn.close()
        return _obs_mode_of_views(model, views), views
    from sgvla.eval.policies import load_policy_config, resolve_checkpoint
    from sgvla.model.loading import check_checkpoint_files, load_processor
    from sgvla.model.processing_sgvla import check_action_decoding

    cfg = load_policy_config(model)
    # In the driver, from headers only: one error line instead of a dead Ray actor's traceback.
    folder = resolve_checkpoint(model)
    check_checkpoint_files(folder, cfg)
    check_action_decoding(folder, cfg)
    load_processor(folder, cfg)  # its processor_config.json agrees with config.json
    views = list(cfg.views)
    return _obs_mode_of_views(model, views), views


def _obs_mode_of_views(model: str, views: list[str]) -> str:
    missing = [v for v in views if v not in VIEWS]
    if missing:
        raise SgvlaError(f"--model {model} needs views {missing} that the env does not render "
                         f"(it renders {', '.join(VIEWS)}): evaluate a model trained on those views")
    return "rgb+depth" if any(view_kind(v) == "depth" for v in views) else "rgb"


def _run_jobs(jobs: list[tuple[str, tuple[int, ...]]], n_workers: int, args: tuple, desc: str,
              gpus_per_worker: float = 0.0) -> list[dict]:
    """Spread (subtask, seeds) chunks over `n_workers` EvalWorker actors; their episodes' records, unordered."""
    import ray

    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=1, max_task_retries=1)(EvalWorker)
    actors = [actor_cls.remote(*args) for _ in range(n_workers)]
    pool = ray.util.ActorPool(actors)
    records = []
    try:
        with tqdm(total=sum(len(seeds) for _, seeds in jobs), desc=desc, unit="ep") as bar:
            for recs in pool.map_unordered(lambda a, job: a.run_batch.remote(*job), jobs):
                records.extend(recs)
                done = sum(r["success"] for r in records)
                bar.set_postfix(success=f"{done}/{len(records)}")
                bar.update(len(recs))
    finally:
        for a in actors:
            ray.kill(a)
    return records


def _gpu_workers(gpus_per_worker: float, n_workers: int) -> int:
    """As many workers as the cluster's GPUs can hold (an actor that cannot be placed would wait
    forever); a clear error when not even one fits."""
    import ray

    if gpus_per_worker <= 0:
        return n_workers
    have = ray.cluster_resources().get("GPU", 0)
    fit = int(have // gpus_per_worker)
    if fit < 1:
        raise SgvlaError(f"--gpus-per-worker {gpus_per_worker:g} but the Ray cluster has {have:g} GPUs: use 0 on "
                         "CPU machines, or join a GPU cluster with --ray-address")
    return min(n_workers, fit)


def episode_seeds(task: str, split: str, seed: int, episodes: int) -> list[int]:
    """Reset seeds of the evaluated episodes: the split's on the built-in scene; on MS-HAB (whose
    val scenes make the split) plain seeds of the val env."""
    if task == BUILTIN_TASK:
        return split_seeds(split, seed, episodes)
    from sgvla.eval.mshab_env import EVAL_SPLIT

    if split != EVAL_SPLIT:
        raise SgvlaError(f"--split {split}: MS-HAB tasks are evaluated on their {EVAL_SPLIT} scenes only")
    if seed < 0:
        raise SgvlaError(f"--seed must be 0 or more (got {seed})")
    return [seed + i for i in range(episodes)]


def run_eval(model: str, task: str, subtask: str, episodes: int, out: Path, mode: str = "auto", seed: int = 0,
             workers: int = 0, ray_address: str | None = None, video: bool = False,
             max_steps: int | None = None, split: str = "val", gpus_per_worker: float = 0.0,
             token_decoding: str | None = None, batch_envs: int = 1, noise_seed: int = 0) -> dict:
    """Evaluate `model` on `episodes` episodes of each subtask; write results.json/results.md into `out`.

    `split` is "val" unless you mean to measure on training episodes; `max_steps` shortens the env's
    horizon (quick checks only: success rates are then not comparable); `batch_envs` envs per worker
    share one batched model call per step (the same episodes up to float rounding: see the module doc);
    `noise_seed` > 0 gives flow mode another draw of its noise on the same episodes.
    """
    out = Path(out)
    subs = _check_inputs(model, task, subtask, episodes, out, mode, workers)
    if max_steps is not None and max_steps <= 0:
        raise SgvlaError(f"--max-steps must be at least 1 (got {max_steps})")
    _check_batch_envs(model, batch_envs)
    seeds = episode_seeds(task, split, seed, episodes)
    obs_mode, views = _obs_mode_for(model)
    jobs = [(sub, tuple(seeds[i:i + batch_envs])) for sub in subs for i in range(0, len(seeds), batch_envs)]
    n_workers = min(len(jobs), workers or os.cpu_count() or 1)

    if gpus_per_worker < 0:
        raise SgvlaError(f"--gpus-per-worker must be 0 or more (got {gpus_per_worker})")
    _check_token_decoding(model, token_decoding)
    _check_noise_seed(model, noise_seed)
    session = RaySession(ray_address, num_cpus=max(n_workers, 1)).start()
    try:
        n_workers = _gpu_workers(gpus_per_worker, n_workers)
        args = (task, model, mode, str(out.resolve()), video, obs_mode, max_steps, gpus_per_worker > 0,
                token_decoding, noise_seed)
        records = _run_jobs(jobs, n_workers, args, f"eval {model} on {task}", gpus_per_worker)
    finally:
        session.close()
    if len(records) != len(subs) * len(seeds):
        raise SgvlaError(f"evaluation finished {len(records)} of {len(subs) * len(seeds)} episodes: nothing was "
                         "written")
    records.sort(key=lambda r: (subs.index(r["subtask"]), r["seed"]))
    results = {"model": model, "task": task, "mode": "reference" if is_reference(model) else mode,
               "token_decoding": token_decoding, "noise_seed": noise_seed, "split": split, "seed": seed,
               "seeds": seeds, "views": views, "max_steps": max_steps, "batch_envs": batch_envs,
               "software": software(), "episodes": records, "aggregate": aggregate(records)}
    json_path, md_path = write_results(out, results)
    print(markdown_table(results))
    print(f"\nresults: {json_path} and {md_path}" + (f"; videos in {out / 'videos'}" if video else ""))
    return results
