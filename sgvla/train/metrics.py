"""Per-step training metrics: one JSON line per optimizer step, mirrored to TensorBoard.

`RUN/metrics.jsonl` is the record `sgvla plot` and the tests read. On a resume the lines written
after the checkpoint being resumed from are dropped first (the steps are about to be redone), so
the file of a killed-and-resumed run reads like the file of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
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


class MetricsLogger:
    """Appends step records to metrics.jsonl and TensorBoard (rank 0 only; others get a no-op)."""

    def __init__(self, run: Path, start_step: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
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
        if self._tb is not None:
            step = record["global_step"]
            for key, value in record.items():
                if key in ("global_step", "epoch", "stage") or not isinstance(value, (int, float)):
                    continue
                if isinstance(value, float) and not math.isfinite(value):
                    continue
                self._tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
