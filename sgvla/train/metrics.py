"""Per-step training metrics: one JSON line per optimizer step, mirrored to TensorBoard (and to
Weights & Biases when `train.wandb` names a project).

`RUN/metrics.jsonl` is the record `sgvla plot` and the tests read. On a resume the lines written
after the checkpoint being resumed from are dropped first (the steps are about to be redone), so
the file of a killed-and-resumed run reads like the file of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from sgvla.dataset.atomic import write_text_atomic

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def read_metrics(run: Path) -> list[dict]:
    """Every complete record of a run's metrics.jsonl (a torn last line is skipped)."""
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(run: Path, keep_through_step: int) -> None:
    """Keep only records with global_step <= keep_through_step (atomic rewrite)."""
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run) if r.get("global_step", 0) <= keep_through_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def open_wandb(project: str, mode: str, run: Path, run_id: str, config: dict):
    """The W&B run rank 0's metrics go to, opened through Ray's integration. The id is the sgvla
    run's own, so a resumed run continues its W&B run; files go under RUN/wandb, next to
    metrics.jsonl, where `wandb sync` finds an offline run."""
    from ray.air.integrations.wandb import setup_wandb

    os.environ["WANDB_MODE"] = mode  # wandb's own switch; Ray's integration asks for an API key unless offline
    name = Path(run).name
    return setup_wandb(config=config, project=project, rank_zero_only=True, trial_id=run_id, trial_name=name,
                       group=None, mode=mode, dir=str(run), resume="allow")


class MetricsLogger:
    """Appends step records to metrics.jsonl, TensorBoard and an optional W&B run (`tracker`,
    anything with `log(dict, step=)` and `finish()`); rank 0 only, others get a no-op."""

    def __init__(self, run: Path, start_step: int, enabled: bool = True, tracker=None) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._tracker = tracker if enabled else None
        if not enabled:
            return
        run = Path(run)
        run.mkdir(parents=True, exist_ok=True)
        truncate_metrics(run, start_step)
        self._file = open(run / METRICS_FILE, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run / TB_DIR), purge_step=start_step + 1)
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            self._tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["global_step"]
        scalars = {f"train/{k}": v for k, v in record.items()
                   if k not in ("global_step", "epoch", "stage") and isinstance(v, (int, float))
                   and not (isinstance(v, float) and not math.isfinite(v))}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._tracker is not None:
            # W&B drops steps at or below its last one: after a resume, the redone steps are skipped there.
            self._tracker.log({**scalars, "train/stage": record.get("stage")}, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._tracker is not None:
            self._tracker.finish()
            self._tracker = None
