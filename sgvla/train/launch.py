"""`sgvla train`: check everything on the driver, then run the schedule on Ray Train.

Layout of a run folder (`--output`):

    config.yaml         the resolved configuration (all defaults filled in)
    run.json            what the run is (fingerprint, dataset, workers), checked by --resume
    checkpoints/        Ray Train's storage: step-NNNNNNNN/ checkpoints + its own snapshot file
    metrics.jsonl       one record per optimizer step (see sgvla.train.metrics), tb/ TensorBoard
    stages/stageK/      the model at the end of each stage (save_policy: model + processor)
    model/              the final model (save_policy: weights, config, processor with its tokenizer
                        and action statistics)

The workers read the dataset themselves; the driver only passes paths, the config and the
statistics. On a multi-node cluster (`--ray-address`), `--output` and a local `--dataset` must be
on storage every node sees at the same path (a Hub dataset is downloaded by each node).
Ray Train's `RunConfig(name="checkpoints", storage_path=RUN)` makes a re-run (the `--resume`
path) and a restart after a worker failure (`FailureConfig`) see the same storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path

from sgvla import provenance
from sgvla.errors import Interrupted, SgvlaError
from sgvla.raysession import RaySession
from sgvla.train import modelops
from sgvla.train.checkpoint import CHECKPOINT_DIR
from sgvla.train.config import batch_plan, load_config
from sgvla.train.loop import FINAL_MODEL_DIR, SNAPSHOTS_DIR, STAGES_DIR, worker_entry
from sgvla.train.metrics import METRICS_FILE, read_metrics
from sgvla.train.preflight import check_output, check_tracking, inspect_dataset, run_id, write_run_file
from sgvla.train.stages import plan_stages


def _start_ray(address: str | None, workers: int, cpus: float, gpus: float) -> RaySession:
    """Start or join Ray; check the cluster can ever place the worker group (else stop what we started)."""
    import ray

    # the driver prints the workers' logs: the progress bars come from there
    session = RaySession(address, log_to_driver=True, configure_logging=True, logging_level="WARNING",
                         runtime_env={"worker_process_setup_hook": "sgvla.train.launch.quiet_ray_internals"}).start()
    res = ray.cluster_resources()
    if gpus > 0 and res.get("GPU", 0) < workers * gpus:
        session.close()
        raise SgvlaError(f"--workers {workers} x --gpus-per-worker {gpus} needs {workers * gpus:g} GPUs but "
                         f"the Ray cluster has {res.get('GPU', 0):g}: lower them (0 on CPU machines)")
    if res.get("CPU", 0) < workers * cpus:
        session.close()
        raise SgvlaError(f"--workers {workers} x train.cpus_per_worker {cpus:g} needs {workers * cpus:g} "
                         f"CPUs but the Ray cluster has {res.get('CPU', 0):g}: lower --workers or --set "
                         "train.cpus_per_worker=0.5")
    return session


#: Ray Train's placement-group watchdog asks the State API (served by the dashboard, which sgvla does
#: not start) once a second and logs a warning each time it cannot: hundreds of identical lines per
#: run that bury the progress bars. Its own failures still surface as errors.
QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)

#: How long an interrupted run waits for Ray Train's controller to stop the workers.
CONTROLLER_STOP_S = 30.0


def quiet_ray_internals() -> None:
    """Ray worker-process setup hook (runs in every worker and actor of a training job)."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _absolute_model_paths(cfg):
    """Local model folders (init_from, components) as absolute paths: Ray workers run elsewhere."""
    m = cfg.model
    if m.init_from and Path(m.init_from).expanduser().exists():
        m.init_from = str(Path(m.init_from).expanduser().resolve())
    comps = m.extra.get("components")
    if isinstance(comps, dict):
        m.extra["components"] = {k: str(Path(v).expanduser().resolve()) if Path(str(v)).expanduser().exists()
                                 else v for k, v in comps.items()}
    return cfg


def run_train(config: Path, dataset: str, output: Path, workers: int = 1, gpus_per_worker: float = 0,
              ray_address: str | None = None, resume: bool = False,
              overrides: list[str] | tuple = ()) -> dict:
    """Train a preset on a dataset into `output` (see the module doc); returns a short summary."""
    cfg = _absolute_model_paths(load_config(Path(config), list(overrides)))
    if workers < 1:
        raise SgvlaError(f"--workers {workers}: need at least 1")
    if gpus_per_worker < 0:
        raise SgvlaError(f"--gpus-per-worker {gpus_per_worker}: must be >= 0")
    if cfg.train.strategy == "fsdp" and workers < 2:
        raise SgvlaError("train.strategy=fsdp shards the model over workers: use --workers >= 2 or "
                         "--set train.strategy=ddp")
    accum = batch_plan(cfg, workers)
    mc = modelops.model_config(cfg)
    plan_stages(cfg, bool(mc.use_flow_expert))
    check_tracking(cfg)
    info = inspect_dataset(str(dataset), cfg, mc)
    output = Path(output).expanduser().resolve()
    prior = check_output(output, resume, cfg, info.source)
    clean_stale_temp(output)
    if prior is None:
        write_run_file(output, cfg, info.source, workers)
    else:
        if prior.get("workers") != workers:
            print(f"note: resuming with --workers {workers} (the run used {prior.get('workers')}): the data "
                  "order is kept, float results may differ slightly")
        if changed := provenance.changes(prior.get("software")):
            print(f"note: resuming with other software or machine than the run started on ({'; '.join(changed)}): "
                  "float results may differ from an uninterrupted run")

    session = _start_ray(ray_address, workers, cfg.train.cpus_per_worker, gpus_per_worker)
    try:
        result = _fit(cfg, info, output, workers, gpus_per_worker)
    finally:
        session.close()
    records = read_metrics(output)
    steps = result.get("global_step") or (records[-1]["global_step"] if records else 0)
    summary = {"run": str(output), "model": str(output / FINAL_MODEL_DIR), "steps": steps,
               "metrics": str(output / METRICS_FILE), "accumulation": accum,
               "final_loss": records[-1]["loss"] if records else None}
    print(f"trained {summary['steps']} steps; final model: {summary['model']}; metrics: {summary['metrics']} "
          f"(draw them with `sgvla plot {output}`)")
    return summary


def clean_stale_temp(output: Path) -> list[Path]:
    """Remove what a killed writer of this run left behind: `save_pretrained`'s `.<name>.tmp-*` /
    `.<name>.old-*` folders (final model, stage models, snapshots) and checkpoints' `.tmp-*` folders.
    Only the driver calls this, before any worker starts, so nothing is still writing them."""
    removed = []
    for folder in (output, output / STAGES_DIR, output / SNAPSHOTS_DIR, output / CHECKPOINT_DIR):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_dir() and p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name
                                                          or p.name.startswith(".tmp-")):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _interruptible_trainer(base):
    """`base` (a Ray Train trainer class) that leaves Ctrl-C to sgvla and keeps its controller.

    Why: on the main thread Ray Train's `fit()` installs its own SIGINT handler, which ends the
    process with status 1 and no word. Without it, Ctrl-C (and SIGTERM, which the CLI turns into
    one) is a KeyboardInterrupt inside `fit()`'s wait on the controller: `_fit` then asks the
    controller to stop the workers before `run_train` shuts Ray down. Stopping everything in that
    order matters: Ray ends the whole process (status 1, before the CLI can say how to resume) when
    anything still waiting on it wakes after `ray.shutdown()`, which a training thread left running
    did now and then. Checkpoints are written atomically, so stopping at any moment loses at most
    the steps since the last one."""

    class Trainer(base):
        controller = None

        def _register_sigint_handler(self, controller) -> None:  # Ray Train v2's hook, see above
            self.controller = controller

    return Trainer


def _stop_controller(trainer) -> None:
    """Ask an interrupted run's controller to stop its workers (bounded: a hung one is killed)."""
    import ray

    controller = getattr(trainer, "controller", None)
    if controller is None:
        return
    try:
        ray.get(controller.abort.remote(), timeout=CONTROLLER_STOP_S)
    except Exception:  # already gone, or hung: killing it ends its workers too
        with contextlib.suppress(Exception):
            ray.kill(controller)


def _drop_torn_ray_snapshot(output: Path) -> None:
    """Set aside Ray Train's checkpoint list if a kill left it half-written (Ray would refuse to start).

    Nothing is lost: the workers find the newest complete checkpoint in the folder themselves.
    """
    snap = output / CHECKPOINT_DIR / "checkpoint_manager_snapshot.json"
    if not snap.is_file():
        return
    try:
        json.loads(snap.read_text())
    except (ValueError, UnicodeDecodeError):
        os.replace(snap, snap.with_name(snap.name + ".torn"))


def _fit(cfg, info, output: Path, workers: int, gpus: float) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    _drop_torn_ray_snapshot(output)
    use_gpu = gpus > 0
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": gpus} if use_gpu else {})}
    payload = {"config": cfg.to_dict(), "data": dataclasses.asdict(info), "run_dir": str(output),
               "run_id": run_id(output)}
    trainer = _interruptible_trainer(TorchTrainer)(
        worker_entry,
        train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=CHECKPOINT_DIR, storage_path=str(output),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            logging_config=LoggingConfig(log_level="WARNING"),  # keep the terminal for the progress bars
        ),
    )
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        try:
            _stop_controller(trainer)
        finally:  # a second Ctrl-C while the workers stop still says how to continue
            raise Interrupted(f"continue with `sgvla train ... --resume --output {output}`") from None
    except Exception as e:  # Ray wraps the worker's exception; its traceback is already printed above
        first = str(e).strip().splitlines()
        raise SgvlaError(f"training failed ({type(e).__name__}: {first[-1] if first else ''}); see the "
                         f"worker traceback above, fix the cause and continue with --resume --output "
                         f"{output}") from None
    err = getattr(result, "error", None)
    if err is not None:
        raise SgvlaError(f"training failed ({err}); fix the cause and continue with --resume --output "
                         f"{output}")
    return dict(result.metrics or {})
