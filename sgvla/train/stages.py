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

from dataclasses import dataclass

from sgvla.errors import SgvlaError
from sgvla.train.config import TrainConfig


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
