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
    """One stage of a run's plan."""

    index: int            # position in the run's plan (0-based)
    name: str             # "stage1" | "stage2" | "stage3"
    epochs: int
    max_steps: int | None
    detach_aux: bool      # decoders see detached features (stage 1)
    train_vlm: bool       # vision towers, projector, LLM and decoders get gradients
    train_expert: bool    # the flow-matching expert gets gradients
    use_aux: bool         # auxiliary losses are part of the objective
    use_flow: bool        # the flow loss is the objective (stage 3)


def plan_stages(cfg: TrainConfig, has_flow_expert: bool, has_aux: bool = True) -> list[Stage]:
    """The stages a config runs, in order (0-epoch stages left out)."""
    if cfg.stage3.epochs and not has_flow_expert:
        raise SgvlaError("stage3.epochs > 0 trains the flow-matching expert, but the model has none: set "
                         "model.use_flow_expert=true or stage3.epochs=0")
    specs = [
        ("stage1", cfg.stage1, dict(detach_aux=True, train_vlm=True, train_expert=False, use_aux=has_aux,
                                    use_flow=False)),
        ("stage2", cfg.stage2, dict(detach_aux=False, train_vlm=True, train_expert=False, use_aux=has_aux,
                                    use_flow=False)),
        ("stage3", cfg.stage3, dict(detach_aux=False, train_vlm=False, train_expert=True, use_aux=False,
                                    use_flow=True)),
    ]
    if cfg.train.schedule == "naive":
        specs = specs[1:]
    out: list[Stage] = []
    for name, sec, flags in specs:
        if sec.epochs > 0:
            out.append(Stage(index=len(out), name=name, epochs=sec.epochs, max_steps=sec.max_steps, **flags))
    return out


def loss_weights(stage: Stage, aux_weights: dict[str, float], aux_names: list[str]) -> dict[str, float]:
    """Weight of each entry of the model's `losses` dict in the stage's objective."""
    if stage.use_flow:
        return {"flow": 1.0}
    weights = {"action": 1.0}
    if stage.use_aux:
        weights.update({name: float(aux_weights.get(name, 1.0)) for name in aux_names})
    return weights
