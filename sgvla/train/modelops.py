"""Everything the trainer does *to* the model and the data, in one place.

The loop (`sgvla.train.loop`) only calls these functions, so the model's API (presets, stage
switches, save/load) and the dataset's API meet the trainer here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sgvla.errors import SgvlaError
from sgvla.train.config import TrainConfig
from sgvla.train.stages import Stage

#: The entries of meta/stats.json's "action" that travel with the model.
_ACTION_STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")


def _action_stats(stats: dict | None) -> dict | None:
    if not stats:
        return None
    return {k: list(stats["action"][k]) for k in _ACTION_STAT_KEYS if k in stats["action"]}


#: SGVLAConfig fields that only the flow expert reads: a run that attaches a new expert to an
#: `init_from` model that has none may set them; every other architecture field is the loaded model's.
EXPERT_FIELDS = ("chunk_size", "flow_steps", "execute_steps", "expert_hidden_size", "expert_intermediate_size",
                 "flow_weight", "flow_time_beta", "flow_samples")
#: Fields of the flow loss alone (no weight depends on them): a run continuing any `init_from` model
#: may set them.
FLOW_LOSS_FIELDS = ("flow_weight", "flow_time_beta", "flow_samples")
_EXPERT_SHAPE = tuple(f for f in EXPERT_FIELDS if f not in FLOW_LOSS_FIELDS)


def _apply_init_overrides(mc, m, new_expert: bool) -> None:
    """Hold the run's model settings against the `init_from` model's config. A setting the loaded
    weights already fix must agree (a silently ignored `--set model.extra.expert_hidden_size=128`
    would train some other model than the one asked for); the expert's fields apply when the run
    attaches a new expert."""
    differ = []
    for key, want in m.preset_overrides().items():
        if key in ("aux_weights", "subtask_modes", "use_flow_expert"):
            continue  # merged on top / handled by the caller
        name = f"model.{key}" if hasattr(m, key) else f"model.extra.{key}"
        have = getattr(mc, key, None)
        if isinstance(want, dict) and hasattr(have, "to_dict"):  # a sub-config such as text_config
            differ += [f"{name}.{k}={v!r} (the model's: {getattr(have, k, None)!r})"
                       for k, v in want.items() if getattr(have, k, None) != v]
        elif key in FLOW_LOSS_FIELDS or (new_expert and key in EXPERT_FIELDS):
            setattr(mc, key, want)
        elif have != want:
            differ.append(f"{name}={want!r} (the model's: {have!r})")
    if differ:
        raise SgvlaError(f"model.init_from={m.init_from} fixes the model's architecture, but the run sets "
                         f"{'; '.join(differ)}: drop these settings, or train from the preset without init_from"
                         + ("" if new_expert else f" (a new flow expert's {', '.join(_EXPERT_SHAPE)} apply only "
                            "to a model saved without one)"))
    mc.validate_sgvla()


def _fit_config(mc, cfg: TrainConfig, stats: dict | None):
    """What every way of building the model shares, applied to its SGVLAConfig after it is made.

    A model started from `init_from` keeps its own architecture (`_apply_init_overrides`) and its own
    aux_weights / subtask_modes but takes the run's on top (a preset gets them as `from_preset`
    overrides instead), and gets a new flow expert when the run asks for one (`build_model` adds
    it); the dataset's action statistics travel with the model so that its actions can be
    un-normalised at inference.
    """
    m = cfg.model
    if m.init_from:
        _apply_init_overrides(mc, m, new_expert=bool(m.use_flow_expert) and not mc.use_flow_expert)
        for key in ("aux_weights", "subtask_modes"):
            if getattr(m, key) is not None:
                setattr(mc, key, {**getattr(mc, key), **getattr(m, key)})
        if m.use_flow_expert:
            mc.use_flow_expert = True
    if stats is not None:
        mc.action_stats = _action_stats(stats)
    return mc


def model_config(cfg: TrainConfig, stats: dict | None = None):
    """The SGVLAConfig a run trains (no weights built): preset + overrides, or `init_from`'s config."""
    from sgvla.model import SGVLAConfig

    m = cfg.model
    if m.init_from:
        if not Path(m.init_from).is_dir():
            raise SgvlaError(f"model.init_from={m.init_from!r} is not a folder: give one written by "
                             "save_pretrained (e.g. RUN/model of an earlier run)")
        mc = SGVLAConfig.from_pretrained(m.init_from)
    else:
        mc = SGVLAConfig.from_preset(m.preset, **m.preset_overrides())
    return _fit_config(mc, cfg, stats)


def build_model(cfg: TrainConfig, stats: dict):
    """(model, processor) to train: the model on CPU with the dataset's action statistics in its
    config, and the processor built from that config (with the tokenizer of `init_from` or of the
    pretrained components, the byte tokenizer for a preset), so both carry the run's statistics."""
    from sgvla.model import SGVLAForActionPrediction, SGVLAProcessor, load_components, load_policy

    m = cfg.model
    if m.init_from or m.extra.get("components"):
        model, loaded = (load_policy(m.init_from) if m.init_from else
                         load_components(**dict(m.extra["components"]), **m.preset_overrides()))
        _fit_config(model.config, cfg, stats)  # before the new expert: it reads the run's expert sizes
        if m.init_from and m.use_flow_expert and model.expert is None:
            model.add_flow_expert()  # seeded like a fresh model's: the caller seeds before building
        tokenizer = loaded.tokenizer
    else:
        model, tokenizer = SGVLAForActionPrediction(model_config(cfg, stats)), None
    model.train()
    return model, SGVLAProcessor.from_config(model.config, tokenizer)


def build_dataset(cfg: TrainConfig, data: dict, mc) -> tuple[torch.utils.data.Dataset, list[int]]:
    """This worker's own map-style dataset (never shipped through the driver) and the row selection."""
    from sgvla.dataset.torch_dataset import SgvlaTorchDataset

    ds = SgvlaTorchDataset(data["source"], configs=data["configs"], split=data["split"], views=mc.views,
                           history=mc.history, chunk_size=mc.chunk_size,
                           stats=data["stats"], masks="mask" in mc.aux_decoders)
    names = np.asarray(ds.subtasks)  # per-row subtask names, read once at construction
    keep = np.ones(len(ds), bool) if cfg.data.subtasks is None else np.isin(names, cfg.data.subtasks)
    if not keep.any():  # the driver cannot count a Hub dataset's rows per subtask: this is where it shows
        raise SgvlaError(f"dataset {data['source']} has no {data['split']!r} rows of subtask(s) "
                         f"{cfg.data.subtasks} in configs {data['configs']}: check data.subtasks / configs")
    if cfg.data.max_episodes is not None:
        keep &= first_episodes(names, ds.start, cfg.data.max_episodes)
        if keep.sum() < cfg.train.global_batch_size:
            raise SgvlaError(f"data.max_episodes={cfg.data.max_episodes} leaves {keep.sum()} samples, fewer "
                             f"than one optimizer step (train.global_batch_size={cfg.train.global_batch_size}): raise "
                             "data.max_episodes or lower train.global_batch_size")
    rows = np.flatnonzero(keep).tolist()
    ds.preload(rows, cfg.data.preload_mb)  # kept rows are whole episodes: their history rows are kept too
    return ds, rows


def first_episodes(subtasks: np.ndarray, episode_start: np.ndarray, n: int) -> np.ndarray:
    """Row mask: the rows of the first `n` episodes of each subtask, episodes in dataset order.

    An episode is identified by its first row (`episode_start`), which stays unique when several
    dataset configs are concatenated, unlike `episode_index`."""
    keep = np.zeros(len(subtasks), bool)
    for s in np.unique(subtasks):
        rows = subtasks == s
        keep |= rows & np.isin(episode_start, np.unique(episode_start[rows])[:n])
    return keep


def has_flow_expert(model) -> bool:
    return model.expert is not None


def _unwrap(model):
    return getattr(model, "module", model)


def apply_stage(model, stage: Stage) -> None:
    """Put the (possibly wrapped) model in `stage` (the model's `configure_stage`); re-wrap for DDP after."""
    _unwrap(model).configure_stage({"stage1": 1, "stage2": 2, "stage3": 3}[stage.name])


def stage_losses(model) -> tuple[str, ...]:
    """The losses the stage set by `apply_stage` computes (the model's `compute_losses`), in order.

    The model decides them in `configure_stage`; the loop only reads them back for its metrics.
    """
    return tuple(_unwrap(model).compute_losses)


def enable_gradient_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing (DDP- and FSDP-safe) of every transformer block: the
    LLM's and both vision towers'. At the paper's sizes the towers hold more activations than the
    LLM (four views of 256 patches each through 23 + 26 blocks; `bench/memory.py`)."""
    m = _unwrap(model)
    for part in (m.llm, m.vision.dino, m.vision.siglip):
        part.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def wrap_ddp(model, env):
    """DistributedDataParallel over the parameters that are trainable *now* (hence once per stage)."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.device.index] if env.device.type == "cuda" else None
    # `apply_stage` freezes every parameter the stage's losses do not reach (the expert in stages 1-2,
    # the VLM in stage 3) and the model has no data-dependent branches, so every trainable parameter
    # gets a gradient in every step and DDP need not search the graph for unused ones.
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def fsdp_policies(device_type: str):
    """(blocks' policy, root's policy). On GPU the blocks compute in bf16 and cast their inputs
    (hidden states) to it; the root does not cast its forward inputs, because those are the batch:
    world-frame targets in metres (bf16 steps of 3-6 cm at a few metres) and auxiliary targets (the
    pixels are raw integers, which no cast touches). Autocast (the training loop's) runs the root's own
    matmuls in bf16 anyway."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device_type != "cuda":
        return MixedPrecisionPolicy(), MixedPrecisionPolicy(cast_forward_inputs=False)
    kw = dict(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy(**kw), MixedPrecisionPolicy(**kw, cast_forward_inputs=False)


def shard_fsdp(model, env) -> None:
    """FSDP2: `fully_shard` every transformer block, then the root (parameters become DTensors)."""
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        raise SgvlaError("train.strategy=fsdp needs a distributed run: use --workers >= 2 or strategy=ddp")
    blocks, root = fsdp_policies(env.device.type)
    m = _unwrap(model)
    names = set(m._no_split_modules)
    for module in list(m.modules()):
        if type(module).__name__ in names:
            fully_shard(module, mp_policy=blocks)
    fully_shard(m, mp_policy=root)


def full_states(model, optimizer, strategy: str) -> tuple[dict, dict | None]:
    """Unsharded model (and optimizer) state on rank 0, keyed by name; every rank must call it."""
    m = _unwrap(model)
    if strategy != "fsdp":
        return m.state_dict(), (optimizer.state_dict() if optimizer is not None else None)
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(m, options=opts)
    osd = get_optimizer_state_dict(m, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_model_state(model, state: dict) -> None:
    """Load a checkpoint's full state into the (not yet sharded or wrapped) model, strictly."""
    missing, unexpected = _unwrap(model).load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SgvlaError(f"the checkpoint does not fit the model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): resume with the run's own config or use a new --output")


def load_optimizer_state(model, optimizer, state: dict, strategy: str) -> None:
    if strategy != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # strict=False: parameters no stage has trained yet (the expert before stage 3) have no Adam state.
    opts = StateDictOptions(full_state_dict=True, strict=False)
    m = _unwrap(model)
    set_optimizer_state_dict(m, optimizer, state, options=opts)
    # Loading first gives every parameter a zero state with step=1 (a dry optimizer step); drop it where
    # the checkpoint had none, or the expert's first real step would use another bias correction.
    saved = set(state.get("state", {}))
    for name, p in m.named_parameters():
        if name not in saved:
            optimizer.state.pop(p, None)


def export_model(model, processor, state: dict, path: Path) -> Path:
    """`save_policy` (atomic: weights, config, processor with its tokenizer and action statistics)
    of a stage-neutral model."""
    from sgvla.model import save_policy

    m = _unwrap(model)
    detach = list(m.config.aux_detach)
    m.set_aux_detach(False)
    try:
        save_policy(m, processor, path, state_dict=state)
    finally:
        m.config.aux_detach = detach
    return Path(path)
