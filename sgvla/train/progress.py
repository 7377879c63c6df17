"""A progress bar per stage (steps, loss, samples/s, ETA) on the driver's terminal.

Inside a Ray worker a plain tqdm would print one line per refresh through Ray's log forwarding;
Ray's `tqdm_ray` sends the bar's state to the driver, which draws a real tqdm bar. Outside Ray
(tests, benchmarks) an ordinary tqdm is used.
"""

from __future__ import annotations


class StageBar:
    """Progress of one stage; `update(metrics)` advances one optimizer step."""

    def __init__(self, name: str, total: int, initial: int) -> None:
        self.name = name
        try:
            import ray

            in_ray = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
        except Exception:  # noqa: BLE001 - no Ray: plain tqdm
            in_ray = False
        if in_ray:
            from ray.experimental.tqdm_ray import tqdm as ray_tqdm

            self.bar = ray_tqdm(desc=name, total=total, unit="step")
            self.bar.n = initial
            self._ray = True
        else:
            from tqdm import tqdm

            self.bar = tqdm(desc=name, total=total, initial=initial, unit="step", dynamic_ncols=True)
            self._ray = False

    def update(self, metrics: dict) -> None:
        text = f"{self.name} loss {metrics.get('loss', float('nan')):.4f} " \
               f"{metrics.get('samples_per_s', 0.0):.1f} samples/s"
        if self._ray:
            self.bar.set_description(text)
        else:
            self.bar.set_description(text, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def stage_bar(stage, total: int, initial: int) -> StageBar:
    """Factory the training loop calls at the start of each stage (rank 0 only)."""
    return StageBar(stage.name, total, initial)
