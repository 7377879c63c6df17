"""The training loop that every Ray Train worker runs (and that tests can run in one process).

One run executes the whole stage plan; where it starts is read from the newest complete
checkpoint of the run folder (stage, epoch, step in epoch, global step), so a fresh start, a
`--resume` and a Ray Train restart after a worker failure all go through the same code. Why one
run rather than chained `fit()` calls: a restart anywhere (even mid-stage 2) is then one code
path, and Ray's ~10 s start-up is paid once.

Exactness: model init is seeded identically on every rank; the data order depends only on
(seed, stage, epoch) (`ResumableDistributedSampler`, started mid-epoch on resume); every rank's
RNG states are restored from the checkpoint; the optimizer state is restored. On CPU a
killed-and-resumed run therefore reproduces the losses of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from sgvla.dataset.sampler import epoch_seed
from sgvla.dataset.torch_dataset import make_dataloader
from sgvla.errors import SgvlaError
from sgvla.train import modelops
from sgvla.train.checkpoint import (
    CHECKPOINT_DIR,
    TrainerState,
    checkpoint_name,
    latest_checkpoint,
    read_checkpoint,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from sgvla.train.config import TrainConfig, batch_plan, config_from_dict
from sgvla.train.metrics import MetricsLogger, open_wandb
from sgvla.train.stages import Stage, plan_stages, stage_lr

FINAL_MODEL_DIR = "model"
STAGES_DIR = "stages"
SNAPSHOTS_DIR = "snapshots"


@dataclass
class WorkerEnv:
    """Where this worker sits in the group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


class Reporter:
    """Tells the orchestrator about checkpoints (no-op outside Ray Train)."""

    def report(self, metrics: dict, checkpoint: Path | None) -> None:  # noqa: D102 - interface
        pass


class RayReporter(Reporter):
    """`ray.train.report` with checkpoints already in the run folder (no copy, just registration)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        import ray.train
        from ray.train import Checkpoint, CheckpointUploadMode

        ckpt = Checkpoint.from_directory(str(checkpoint)) if (checkpoint and self.rank == 0) else None
        name = checkpoint.name if checkpoint else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


# ---------------------------------------------------------------------------------------------
# One optimizer step


def autocast_context(cfg: TrainConfig, device: torch.device):
    """bf16 autocast on GPU (or when asked for), nothing on CPU fp32."""
    p = cfg.train.precision
    if p == "fp32" or (p == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def seed_rank(seed: int, rank: int) -> None:
    """Seed this rank's training randomness (flow-matching noise and times, dropout) apart from the
    other ranks'. The model is initialised from the same seed on every rank; if the ranks also kept
    drawing from that seed, each step's global batch would repeat the same noise on every rank (only
    1/world of the draws distinct). Checkpoints store every rank's state, so resume stays exact."""
    import random

    import numpy as np

    s = epoch_seed(seed, 2000 + rank, 0)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


class NonFiniteLoss(SgvlaError):
    """A step whose loss is NaN/inf: the run stops before that step changes any weight."""


def train_step(model: torch.nn.Module, batches: list[dict], optimizer: torch.optim.Optimizer,
               losses: Sequence[str], cfg: TrainConfig, device: torch.device,
               forward_kwargs: dict | None = None) -> dict[str, float]:
    """Accumulate gradients over `batches` (one global step's share), then one Adam step.

    `losses` are the stage's losses (`modelops.stage_losses`): each is logged as `loss_<name>`.
    Returns this rank's mean of each loss, the objective, token accuracy and the gradient norm.
    """
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}  # device tensors: one host sync per step, not per loss

    def add(key: str, value: torch.Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + value.detach().float() / n

    n = len(batches)
    for i, batch in enumerate(batches):
        batch = _to_device(batch, device)
        # DDP: all-reduce only after the last micro batch (forward and backward inside no_sync)
        sync = i == n - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast_context(cfg, device):
                out = model(**batch, **(forward_kwargs or {}))
            (out.loss / n).backward()
        add("loss", out.loss)
        for k, v in out.losses.items():
            if v is not None and k in losses:
                add(f"loss_{k}", v)
        acc = getattr(out, "token_accuracy", None)
        if acc is not None and "action" in losses:
            add("token_accuracy", acc)
    loss = float(sums["loss"])
    if not math.isfinite(loss):  # before the optimizer step: the weights stay those of the last step
        bad = ", ".join(f"{k}={float(v):.4g}" for k, v in sums.items())
        raise NonFiniteLoss(f"the loss is not finite ({bad})")
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm is not None else math.inf
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    optimizer.step()
    out_values = {k: float(v) for k, v in sums.items()}
    out_values["grad_norm"] = float(norm)
    return out_values


def reduce_metrics(values: dict[str, float], keys: list[str], env: WorkerEnv) -> dict[str, float]:
    """Mean over ranks of each metric (a rank missing a key does not count for it)."""
    if not env.distributed:
        return {k: values[k] for k in keys if k in values}
    t = torch.tensor([[values.get(k, 0.0), 1.0 if k in values else 0.0] for k in keys], dtype=torch.float64,
                     device=env.device)  # NCCL reduces device tensors only
    dist.all_reduce(t)
    return {k: (t[i, 0] / t[i, 1]).item() for i, k in enumerate(keys) if t[i, 1] > 0}


# ---------------------------------------------------------------------------------------------
# The worker


class Worker:
    """Runs a config's stage plan on one rank; see the module doc."""

    def __init__(self, cfg: TrainConfig, data: dict, run_dir: Path, env: WorkerEnv,
                 reporter: Reporter | None = None, progress: Callable | None = None, run_id: str = "") -> None:
        self.cfg, self.data, self.run_dir, self.env = cfg, data, Path(run_dir), env
        self.run_id = run_id or self.run_dir.name
        self.reporter = reporter or Reporter()
        self.progress = progress
        self.ckpt_root = self.run_dir / CHECKPOINT_DIR
        self.accum = batch_plan(cfg, env.world_size)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model, self.processor = modelops.build_model(cfg, data["stats"])
        self.dataset, self.indices = modelops.build_dataset(cfg, data, self.model.config)
        self.collate = self.processor.collate  # tokenizes: batches model(**batch) takes
        self.stages = plan_stages(cfg, modelops.has_flow_expert(self.model))
        self.state = TrainerState(fingerprint=cfg.compat_fingerprint())
        self.per_rank = len(self.indices) // env.world_size  # samples per rank and epoch (tail dropped)
        self._last_saved = -1

    # -- set-up ---------------------------------------------------------------------------
    def _restore(self) -> tuple[dict | None, list | None]:
        path = latest_checkpoint(self.ckpt_root)
        if path is None:
            return None, None
        state, model_state, optim_state, rngs = read_checkpoint(path)
        modelops.load_model_state(self.model, model_state)
        self.state = state
        self._last_saved = state.global_step
        return optim_state, rngs

    def _setup(self) -> None:
        optim_state, rngs = self._restore()
        self.model.to(self.env.device)
        if self.cfg.model.gradient_checkpointing:
            modelops.enable_gradient_checkpointing(self.model)
        if self.cfg.train.strategy == "fsdp":
            modelops.shard_fsdp(self.model, self.env)
        o = self.cfg.optim
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                          weight_decay=o.weight_decay)
        if optim_state is not None:
            modelops.load_optimizer_state(self.model, self.optimizer, optim_state, self.cfg.train.strategy)
        if rngs is not None and len(rngs) == self.env.world_size:
            set_rng_state(rngs[self.env.rank])
        elif rngs is not None:  # another world size: data order is kept, randomness is reseeded
            torch.manual_seed(epoch_seed(self.cfg.train.seed, 1000 + self.env.rank, self.state.global_step))
        else:  # fresh start: identical weights everywhere (seeded in __init__), own noise per rank
            seed_rank(self.cfg.train.seed, self.env.rank)
        self.logger = MetricsLogger(self.run_dir, self.state.global_step, enabled=self.env.rank == 0,
                                    tracker=self._tracker())

    def _tracker(self):
        """The W&B run of rank 0 when `train.wandb` names a project (None otherwise)."""
        t = self.cfg.train
        if not t.wandb or self.env.rank != 0:
            return None
        return open_wandb(t.wandb, t.wandb_mode, self.run_dir, self.run_id, self.cfg.to_dict())

    # -- checkpoints ------------------------------------------------------------------------
    def _gather_rngs(self) -> list[dict]:
        mine = rng_state()
        if not self.env.distributed:
            return [mine]
        out: list = [None] * self.env.world_size
        dist.all_gather_object(out, mine)
        return out

    def save(self, metrics: dict) -> Path | None:
        """Checkpoint the current state (every rank must call it: RNGs and shards are gathered)."""
        if self._last_saved == self.state.global_step:
            return None
        rngs = self._gather_rngs()
        model_state, optim_state = modelops.full_states(self.model, self.optimizer, self.cfg.train.strategy)
        path = self.ckpt_root / checkpoint_name(self.state.global_step)
        if self.env.rank == 0:
            path = write_checkpoint(self.ckpt_root, self.state, model_state, optim_state, rngs)
        if self.env.distributed:
            dist.barrier()
        self.reporter.report({**metrics, "global_step": self.state.global_step}, path)
        self._last_saved = self.state.global_step
        return path

    def export(self, path: Path) -> None:
        """save_policy of the current weights and the processor (rank 0 writes; all ranks gather)."""
        model_state, _ = modelops.full_states(self.model, None, self.cfg.train.strategy)
        if self.env.rank == 0:
            modelops.export_model(self.model, self.processor, model_state, path)
        if self.env.distributed:
            dist.barrier()

    # -- the schedule -----------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return self.per_rank // (self.cfg.train.micro_batch_size * self.accum)

    def stage_total_steps(self, stage: Stage) -> int:
        total = self.steps_per_epoch() * stage.epochs
        return min(total, stage.max_steps) if stage.max_steps else total

    def _loader(self, stage: Stage, epoch: int, start_step: int) -> DataLoader:
        t, env = self.cfg.train, self.env
        return make_dataloader(self.dataset, t.micro_batch_size, num_workers=self.cfg.data.loader_workers,
                               seed=t.seed, rank=env.rank, world_size=env.world_size, drop_last=True,
                               epoch=epoch, collate_fn=self.collate, indices=self.indices, stage=stage.index,
                               start=start_step * t.micro_batch_size * self.accum)

    def _next_stage_state(self, stage: Stage) -> None:
        s = self.state
        s.stage, s.epoch, s.step_in_epoch, s.stage_step = stage.index + 1, 0, 0, 0
        s.done = s.stage >= len(self.stages)
        s.stage_name = self.stages[s.stage].name if not s.done else "done"

    def run_stage(self, stage: Stage) -> dict:
        cfg, env, s = self.cfg, self.env, self.state
        modelops.apply_stage(self.model, stage)
        wrapped = modelops.wrap_ddp(self.model, env) if cfg.train.strategy == "ddp" else self.model
        losses = modelops.stage_losses(self.model)
        per_epoch, total = self.steps_per_epoch(), self.stage_total_steps(stage)
        keys = ["loss"] + [f"loss_{k}" for k in losses] + (["token_accuracy"] if "action" in losses else [])
        keys.append("grad_norm")
        bar = self.progress(stage, total, s.stage_step) if (self.progress and env.rank == 0) else None
        last: dict = {}
        s.stage_name = stage.name
        for epoch in range(s.epoch, stage.epochs):
            if s.stage_step >= total:
                break
            s.epoch = epoch
            it = iter(self._loader(stage, epoch, s.step_in_epoch))
            while s.step_in_epoch < per_epoch and s.stage_step < total:
                t0 = time.perf_counter()
                batches = [next(it) for _ in range(self.accum)]
                for group in self.optimizer.param_groups:
                    group["lr"] = stage_lr(cfg.optim, s.stage_step, total)
                try:
                    values = train_step(wrapped, batches, self.optimizer, losses, cfg, env.device)
                except NonFiniteLoss as e:
                    raise SgvlaError(f"{e} at {stage.name} step {s.stage_step + 1} (global step "
                                     f"{s.global_step + 1}); nothing of that step was saved. Check the data "
                                     "with `sgvla validate DATASET` or lower optim.lr, then continue from "
                                     "the last checkpoint with --resume") from None
                metrics = reduce_metrics(values, keys, env)
                dt = time.perf_counter() - t0
                s.step_in_epoch += 1
                s.stage_step += 1
                s.global_step += 1
                s.samples += cfg.train.global_batch_size
                last = {**metrics, "stage": stage.name, "lr": self.optimizer.param_groups[0]["lr"],
                        "samples_per_s": cfg.train.global_batch_size / dt}
                self.logger.log({"global_step": s.global_step, "epoch": epoch, "step": s.stage_step, **last,
                                 "samples": s.samples, "time": time.time()})
                if bar is not None:
                    bar.update(last)
                epoch_done = s.step_in_epoch == per_epoch
                if epoch_done:  # a checkpoint taken now must resume at the next epoch's start
                    s.epoch, s.step_in_epoch = epoch + 1, 0
                every = cfg.train.checkpoint_every
                if every and s.global_step % every == 0 and s.stage_step < total:
                    self.save(last)
                if cfg.train.export_every and s.global_step % cfg.train.export_every == 0:
                    self.export(self.run_dir / SNAPSHOTS_DIR / checkpoint_name(s.global_step))
                if epoch_done:
                    break
            del it
        if bar is not None:
            bar.close()
        del wrapped  # drops the DDP reducer and its gradient hooks before the next stage re-wraps
        gc.collect()
        self.export(self.run_dir / STAGES_DIR / stage.name)
        self._next_stage_state(stage)
        self.save(last)
        return last

    def run(self) -> dict:
        self._setup()
        last: dict = {}
        try:
            while not self.state.done and self.state.stage < len(self.stages):
                last = self.run_stage(self.stages[self.state.stage])
            self.export(self.run_dir / FINAL_MODEL_DIR)
        finally:
            self.logger.close()
        return {**last, "global_step": self.state.global_step}


def cpu_threads(cpus_per_worker: float) -> int:
    """Threads for a CPU worker's torch pool. Ray Train does not pass the worker's CPU share on to
    torch, whose pool then spans the machine: two workers (or a worker and its data loader) on 2
    cores ran 1.5-3x slower. An explicit `OMP_NUM_THREADS` caps it further, for a machine that
    other jobs share: two trainings side by side on 2 cores ran 5.8 steps/s each with one thread
    apiece, 1.4 with two."""
    threads = max(1, int(cpus_per_worker))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads


def _quiet_worker_logs() -> None:
    """Keep the driver's terminal for the progress bars: no per-report INFO lines, no save bars."""
    import logging

    from transformers.utils import logging as hf_logging

    # Ray Train logs every report at INFO through the root logger of the worker.
    logging.getLogger().setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()


def worker_entry(payload: dict) -> None:
    """Ray Train's `train_loop_per_worker`: build the worker from the driver's payload and run it."""
    import ray.train
    import ray.train.torch

    _quiet_worker_logs()
    ctx = ray.train.get_context()
    env = WorkerEnv(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    cfg = config_from_dict(payload["config"], where="run config")
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    else:
        torch.set_num_threads(cpu_threads(cfg.train.cpus_per_worker))
    from sgvla.train.progress import stage_bar

    Worker(cfg, payload["data"], Path(payload["run_dir"]), env, RayReporter(env.rank), stage_bar,
           run_id=payload["run_id"]).run()
