"""The progressive schedule (paper, section 5) as data: which losses, which gradients, how long.

* stage 1, decoder adaptation: every auxiliary decoder reads *detached* LLM features, so the
  backbone is updated by the action-token loss alone while the decoders learn;
* stage 2, joint refinement: full gradient, loss = action + sum_i lambda_i * aux_i;
* stage 3, action head: the VLM and the decoders are frozen, only the flow-matching expert trains
  on the flow loss.

The "naive" schedule of Table 3 is stage 2 from the start. Stages with 0 epochs are skipped, and
stage 3 needs a model with a flow expert. How a stage is applied to a model (detach switches,
`requires_grad`, train/eval modes) lives in `sgvla.train.modelops`; this module stays pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sgvla.errors import SgvlaError
from sgvla.train.config import OptimSection, TrainConfig


@dataclass(frozen=True)
class Stage:
    """One stage of a run's plan. What it trains and which losses it computes is the model's
    `configure_stage` (applied by `sgvla.train.modelops.apply_stage`), so it is not repeated here."""

    index: int            # position in the run's plan (0-based)
    name: str             # "stage1" | "stage2" | "stage3"
    epochs: int
    max_steps: int | None


def plan_stages(cfg: TrainConfig, has_flow_expert: bool) -> list[Stage]:
    """The stages a config runs, in order (0-epoch stages left out)."""
    if cfg.stage3.epochs and not has_flow_expert:
        raise SgvlaError("stage3.epochs > 0 trains the flow-matching expert, but the model has none: set "
                         "model.use_flow_expert=true or stage3.epochs=0")
    names = ["stage1", "stage2", "stage3"]
    if cfg.train.schedule == "naive":
        names = names[1:]
    out: list[Stage] = []
    for name in names:
        sec = getattr(cfg, name)
        if sec.epochs > 0:
            out.append(Stage(index=len(out), name=name, epochs=sec.epochs, max_steps=sec.max_steps))
    return out


def stage_lr(optim: OptimSection, step: int, total: int) -> float:
    """Learning rate of a stage's `step`-th optimizer step (0-based) out of `total`. A function of the
    position alone, so a resumed run continues the same curve with no scheduler state to save."""
    if optim.lr_schedule == "constant":
        return optim.lr
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(1, total - optim.warmup_steps - 1)
    done = min(1.0, (step - optim.warmup_steps) / span)
    low = optim.lr * optim.min_lr_ratio
    return low + (optim.lr - low) * 0.5 * (1 + math.cos(math.pi * done))
