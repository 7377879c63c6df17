"""The training configuration: dataclasses are the one source of truth, YAML only fills them in.

A preset YAML (see `configs/`) may name a `base:` file it extends; its keys must be fields of the
dataclasses below (a typo is an error naming the file and the closest field, not a silently
ignored value). `--set a.b=c` overrides are applied to the merged YAML before validation, with
the value parsed as YAML (`--set stage1.epochs=3`, `--set model.views=[head_rgb]`).

Why the sections: `model` is passed to `SGVLAConfig.from_preset`, `data` to the torch dataset,
`optim` builds Adam, `train` holds everything about batching, precision, distribution and
checkpoints, and `stage1`..`stage3` the progressive schedule (paper, section 5).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sgvla.errors import SgvlaError
from sgvla.tasks import SUBTASKS

SCHEDULES = ("progressive", "naive")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "bf16", "fp32")
STRATEGIES = ("ddp", "fsdp")
WANDB_MODES = ("online", "offline")
ACTION_NORMALIZATIONS = ("q99", "none")


@dataclass
class ModelSection:
    """Which model to build. `None` keeps the preset's own value."""

    preset: str = "tiny"
    views: list[str] | None = None
    history: int | None = None
    image_size: int | None = None
    chunk_size: int | None = None
    use_flow_expert: bool | None = None
    aux_decoders: list[str] | None = None
    aux_weights: dict[str, float] | None = None
    subtask_modes: dict[str, str] | None = None
    #: Extra keyword arguments for `SGVLAConfig.from_preset` (e.g. component paths of sgvla-1.3b).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Start from a `save_pretrained` folder instead of the preset's initialisation; with
    #: `use_flow_expert: true` a model saved without an expert gets a new one (for stage 3).
    init_from: str | None = None
    #: Recompute the LLM's activations in the backward pass (saves memory on the full model).
    gradient_checkpointing: bool = False

    def preset_overrides(self) -> dict[str, Any]:
        """The non-None fields that `from_preset` takes as overrides (`extra` but its `components`:
        the pretrained parts to load, which `load_components` takes, not a config field)."""
        keys = ("views", "history", "image_size", "chunk_size", "use_flow_expert", "aux_decoders",
                "aux_weights", "subtask_modes")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        out.update({k: v for k, v in self.extra.items() if k != "components"})
        return out


@dataclass
class DataSection:
    """Which part of the dataset to train on and how to feed it."""

    #: Dataset configs (tasks) to train on; None = every config the dataset has.
    configs: list[str] | None = None
    split: str = "train"
    #: Keep only these subtasks (the paper's seg/obj-pose runs use pick and place); None = all.
    subtasks: list[str] | None = None
    #: Keep only the first N episodes (dataset order) of each selected subtask; None = all. For
    #: learning curves against the amount of data from one dataset, so that every point shares its
    #: action statistics. Demos recorded with `sgvla demos --repeats R` are R consecutive episodes.
    max_episodes: int | None = None
    #: DataLoader worker processes per Ray Train worker (PNG decoding happens there).
    loader_workers: int = 2
    #: Decode the selected rows' images once, into memory, when they fit in this many MiB per
    #: training worker (128 px, four views: 160 KiB a row, so 4096 holds about 26,000 rows); a
    #: bigger selection is decoded per sample as before. 0: never. Same samples either way.
    preload_mb: float = 4096
    #: How actions map to [-1, 1] before tokenizing: "q99" (the dataset's q01/q99 of each dimension,
    #: clipped; OpenVLA's BOUNDS_Q99, the paper's) or "none" (as recorded: the controllers' range
    #: is already [-1, 1]; for demos recorded on the token grid, `sgvla demos --token-grid`).
    action_normalization: str = "q99"


@dataclass
class OptimSection:
    """Adam; the paper's learning rate is constant (section 6.1), the default here."""

    lr: float = 2e-5
    #: "constant" (paper) or "cosine": within each stage, linear warm-up over `warmup_steps`, then a
    #: half cosine down to `lr * min_lr_ratio` at the stage's last step. Short CPU-scale runs need the
    #: decay: at a constant rate their weights end wherever the last noisy steps left them.
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    #: Clip the global gradient norm to this; None = no clipping (the norm is logged either way).
    max_grad_norm: float | None = None


@dataclass
class TrainSection:
    """Batching, precision, distribution, checkpoints and logging."""

    #: "progressive" (stage 1 then stage 2) or "naive" (all losses from the start: no stage 1).
    schedule: str = "progressive"
    #: Samples per optimizer step over all workers (paper: 512).
    global_batch_size: int = 512
    #: Samples per forward pass on one worker; gradient accumulation makes up the rest.
    micro_batch_size: int = 32
    seed: int = 0
    #: "auto" = bf16 autocast on GPU, fp32 on CPU.
    precision: str = "auto"
    #: "ddp" (default) or "fsdp" (PyTorch FSDP2 `fully_shard`, for the full-size model).
    strategy: str = "ddp"
    #: Checkpoint every N optimizer steps (0 = only at stage boundaries and the end).
    checkpoint_every: int = 500
    #: Step checkpoints Ray Train keeps (stage-boundary models are kept apart under stages/).
    keep_checkpoints: int = 2
    #: Also save_pretrained the model every N optimizer steps under snapshots/step-N (0 = never):
    #: evaluable models along the run, for learning curves (`scripts/learning_curve.py`).
    export_every: int = 0
    #: Worker-group restarts Ray Train allows after a failure (each resumes from the latest checkpoint).
    max_failures: int = 2
    #: CPUs Ray reserves per training worker; on a CPU worker also its torch threads.
    cpus_per_worker: float = 1.0
    #: Weights & Biases project the metrics are mirrored to ("" = off; needs `pip install wandb`).
    #: Rank 0 logs through Ray's W&B integration; a resumed run continues the same W&B run.
    wandb: str = ""
    #: "online" (needs `wandb login` or WANDB_API_KEY) or "offline" (files under RUN/wandb; upload
    #: later with `wandb sync`).
    wandb_mode: str = "online"


@dataclass
class StageSection:
    """Length of one stage of the schedule."""

    epochs: int = 0
    #: Stop the stage after this many optimizer steps (None = run all its epochs); for smoke runs.
    max_steps: int | None = None


@dataclass
class TrainConfig:
    """Everything `sgvla train` needs besides the dataset, output folder and cluster flags."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    stage1: StageSection = field(default_factory=lambda: StageSection(epochs=3))
    stage2: StageSection = field(default_factory=lambda: StageSection(epochs=7))
    stage3: StageSection = field(default_factory=StageSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def compat_view(self) -> dict:
        """What a resumed run must share with the checkpoint it continues.

        The model's shape, the data order (dataset part, batch sizes, seed) and the schedule kind;
        stage lengths, checkpoint cadence and logging may change between runs. run.json stores it
        so that a refused --resume can name the fields that changed.
        """
        d = self.to_dict()
        data = {k: d["data"][k] for k in ("configs", "split", "subtasks")}
        if self.data.max_episodes is not None:  # only when set: runs from before the field still resume
            data["max_episodes"] = self.data.max_episodes
        return {"model": d["model"], "data": data,
                "train": {k: d["train"][k] for k in ("global_batch_size", "micro_batch_size", "seed",
                                                     "schedule", "strategy")}}

    def compat_fingerprint(self) -> str:
        """Short hash of `compat_view()` (stored in run.json and every checkpoint)."""
        text = json.dumps(self.compat_view(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# YAML -> dataclasses


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value, tp, where: str):
    """Check/convert one YAML value against a field's type annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except SgvlaError as e:
                errors.append(str(e))
        raise SgvlaError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise SgvlaError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise SgvlaError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SgvlaError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SgvlaError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        # YAML 1.1 reads `2e-5` (no dot) as a string: accept it as the number it obviously is.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise SgvlaError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise SgvlaError(f"{where} must be a string, got {value!r}")
    raise SgvlaError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls, data: dict, where: str):
    """Dataclass `cls` from a mapping, refusing unknown keys with a 'did you mean' hint."""
    if not isinstance(data, dict):
        raise SgvlaError(f"{where} must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        sub = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise SgvlaError(f"unknown config key {sub}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, sub)
        else:
            kwargs[key] = _coerce(value, tp, sub)
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    """A preset over its base, section by section: fields it names replace the base's whole.

    Why not a deep merge: a field's value is one setting (`model.aux_weights: {grasp: 5}` means
    exactly those weights, not the base's plus grasp), so only sections merge.
    """
    out = dict(base)
    for section, fields in over.items():
        if isinstance(fields, dict) and isinstance(out.get(section), dict):
            out[section] = {**out[section], **fields}
        else:
            out[section] = fields
    return out


def read_yaml_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A preset's YAML with its `base:` chain merged in (base first, then this file)."""
    path = Path(path)
    if path.is_dir():
        raise SgvlaError(f"--config {path} is a folder: give a YAML file, e.g. one of configs/*.yaml")
    if not path.is_file():
        raise SgvlaError(f"config file {path} does not exist (--config): pick one of configs/*.yaml")
    if path.resolve() in _seen:
        raise SgvlaError(f"config {path} includes itself through `base:`: remove the loop")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SgvlaError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    except UnicodeDecodeError:
        raise SgvlaError(f"config {path} is not a text file (not UTF-8): give a YAML file such as "
                         "configs/tiny.yaml") from None
    if not isinstance(data, dict):
        raise SgvlaError(f"config {path} must be a mapping of sections (model:, train:, ...)")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = read_yaml_tree(path.parent / str(base), _seen + (path.resolve(),))
    return _merge(parent, data)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings (value parsed as YAML) to a nested mapping."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise SgvlaError(f"--set {item!r} must look like section.key=value, e.g. stage1.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise SgvlaError(f"--set {item!r}: the value is not valid YAML ({e})") from e
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise SgvlaError(f"--set {item!r} names no key")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise SgvlaError(f"--set {item!r}: {p} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def validate(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    """Cross-field checks that the types alone cannot express."""
    t = cfg.train
    if t.schedule not in SCHEDULES:
        raise SgvlaError(f"{where}: train.schedule must be one of {SCHEDULES}, got {t.schedule!r}")
    if t.precision not in PRECISIONS:
        raise SgvlaError(f"{where}: train.precision must be one of {PRECISIONS}, got {t.precision!r}")
    if t.strategy not in STRATEGIES:
        raise SgvlaError(f"{where}: train.strategy must be one of {STRATEGIES}, got {t.strategy!r}")
    if t.wandb_mode not in WANDB_MODES:
        raise SgvlaError(f"{where}: train.wandb_mode must be one of {WANDB_MODES}, got {t.wandb_mode!r}")
    if t.global_batch_size < 1 or t.micro_batch_size < 1:
        raise SgvlaError(f"{where}: train.global_batch_size and train.micro_batch_size must be >= 1")
    if t.checkpoint_every < 0 or t.keep_checkpoints < 1 or t.max_failures < 0 or t.export_every < 0:
        raise SgvlaError(f"{where}: train.checkpoint_every >= 0, keep_checkpoints >= 1, max_failures >= 0, "
                         "export_every >= 0")
    for name in ("stage1", "stage2", "stage3"):
        st = getattr(cfg, name)
        if st.epochs < 0 or (st.max_steps is not None and st.max_steps < 1):
            raise SgvlaError(f"{where}: {name}.epochs must be >= 0 and {name}.max_steps >= 1 or null")
    if t.schedule == "naive" and cfg.stage1.epochs:
        raise SgvlaError(f"{where}: the naive schedule has no stage 1 (all losses from the start): "
                         "set stage1.epochs=0 and give its epochs to stage2")
    if cfg.stage1.epochs + cfg.stage2.epochs + cfg.stage3.epochs == 0:
        raise SgvlaError(f"{where}: every stage has 0 epochs: set stage2.epochs (and stage1/stage3)")
    o = cfg.optim
    if o.lr <= 0 or len(o.betas) != 2:
        raise SgvlaError(f"{where}: optim.lr must be > 0 and optim.betas two numbers")
    if o.lr_schedule not in LR_SCHEDULES or o.warmup_steps < 0 or not 0 <= o.min_lr_ratio <= 1:
        raise SgvlaError(f"{where}: optim.lr_schedule must be one of {LR_SCHEDULES} (got {o.lr_schedule!r}), "
                         "optim.warmup_steps >= 0 and optim.min_lr_ratio in [0, 1]")
    if cfg.data.loader_workers < 0 or cfg.data.preload_mb < 0:
        raise SgvlaError(f"{where}: data.loader_workers and data.preload_mb must be >= 0")
    if cfg.data.action_normalization not in ACTION_NORMALIZATIONS:
        raise SgvlaError(f"{where}: data.action_normalization must be one of {ACTION_NORMALIZATIONS}, got "
                         f"{cfg.data.action_normalization!r}")
    if cfg.data.max_episodes is not None and cfg.data.max_episodes < 1:
        raise SgvlaError(f"{where}: data.max_episodes must be >= 1, or null for every episode")
    subs = cfg.data.subtasks
    if subs is not None:  # here, not in the dataset checks, so that it holds for local and Hub data alike
        bad = [s for s in subs if s not in SUBTASKS]
        if bad or not subs:
            raise SgvlaError(f"{where}: data.subtasks has unknown subtask(s) {bad or '(empty list)'}: choose "
                             f"from {', '.join(SUBTASKS)}, or null for all")
    return cfg


def config_from_dict(data: dict, where: str = "config") -> TrainConfig:
    """Build and validate a TrainConfig from a plain mapping (e.g. a run's saved config)."""
    try:
        cfg = _build(TrainConfig, data, "")
    except SgvlaError as e:
        raise SgvlaError(f"{where}: {e}") from None
    return validate(cfg, where)


def load_config(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Preset YAML (+ its `base:` chain) + `--set` overrides -> a validated TrainConfig."""
    data = apply_overrides(read_yaml_tree(Path(path)), list(overrides))
    return config_from_dict(data, where=str(path))


def batch_plan(cfg: TrainConfig, world_size: int) -> int:
    """Gradient-accumulation steps so that workers x micro batch x accumulation = global batch."""
    t = cfg.train
    per_step = world_size * t.micro_batch_size
    if t.global_batch_size % per_step:
        raise SgvlaError(
            f"train.global_batch_size={t.global_batch_size} is not a multiple of --workers ({world_size}) x "
            f"train.micro_batch_size ({t.micro_batch_size}): change one with --set or --workers")
    return t.global_batch_size // per_step
