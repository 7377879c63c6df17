"""Checks made on the driver before any Ray worker starts.

Starting a Ray Train run costs ~10 s and a failure inside a worker surfaces as a long traceback;
every problem a user can fix (a dataset without the columns the preset reads, too few samples for
one optimizer step, an output folder holding another run, a resume that cannot continue the
checkpoint) is found here and raised as one SgvlaError sentence instead.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sgvla.errors import SgvlaError, load_json
from sgvla.provenance import software
from sgvla.tasks import SUBTASKS
from sgvla.train.checkpoint import CHECKPOINT_DIR, latest_checkpoint, read_state
from sgvla.train.config import TrainConfig
from sgvla.train.metrics import METRICS_FILE
from sgvla.vocab import AUX_COLUMNS
from sgvla.waits import reach_within

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"

ALWAYS_COLUMNS = ("action", "instruction", "subtask", "episode_index", "frame_index")


def required_columns(model_config) -> list[str]:
    """Columns a model with this SGVLAConfig reads: its views, the action and its decoders' targets."""
    cols = list(ALWAYS_COLUMNS) + list(model_config.views)
    for name in model_config.aux_decoders:
        if name == "mask":
            cols += [f"{cam}_mask" for cam in model_config.mask_cameras]
        else:
            cols += list(AUX_COLUMNS[name])
    return list(dict.fromkeys(cols))


@dataclass
class DatasetInfo:
    """What the driver learned about the dataset (passed on to the workers)."""

    source: str                       # absolute local folder, or a Hub repo id
    configs: list[str]
    split: str
    # rows of the selected configs/split/subtasks; on the Hub, of the configs/split only (its row
    # counts are per split): the workers' row selection then refuses a subtask filter with no rows;
    # data.max_episodes is applied there as well
    num_rows: int
    stats: dict = field(repr=False, default_factory=dict)


def _is_local(dataset: str) -> bool:
    p = Path(dataset).expanduser()
    return p.exists() or dataset.startswith((".", "/", "~")) or dataset.count("/") != 1


def _inspect_local(root: Path, cfg: TrainConfig, needed: list[str]) -> DatasetInfo:
    from sgvla.dataset.layout import group_shards, open_shard, require_dataset
    from sgvla.dataset.torch_dataset import load_stats_for
    from sgvla.dataset.validate import check_layout

    shards = require_dataset(root)
    layout = check_layout(root, shards)
    if layout:  # a deleted shard would otherwise surface inside the workers as a raw datasets error
        raise SgvlaError(f"{layout[0]}; run `sgvla validate {root}` for the full list, then re-run `sgvla gen` "
                         "on the folder to record what is missing")
    grouped = group_shards(shards)
    split = cfg.data.split
    have = sorted(c for c, splits in grouped.items() if split in splits)
    configs = cfg.data.configs or have
    missing = [c for c in configs if c not in have]
    if missing:
        raise SgvlaError(f"dataset {root} has no {split!r} split for config(s) {missing} (data.configs / "
                         f"data.split): it has {have or 'none'}")
    # the names were checked by config validation; the parquet column holds their indices
    subtask_ids = None if cfg.data.subtasks is None else {SUBTASKS.index(s) for s in cfg.data.subtasks}
    rows = 0
    for config in configs:
        for shard in grouped[config][split]:
            pf = open_shard(shard.path)
            names = set(pf.schema_arrow.names)
            lacking = [c for c in needed if c not in names]
            if lacking:
                raise SgvlaError(f"dataset shard {shard.path} has no column(s) {lacking} that this preset "
                                 "needs (model views / aux_decoders): use a dataset recorded with them or "
                                 "drop them with --set model.views=... / model.aux_decoders=...")
            if shard is grouped[config][split][0]:  # one sample per config: a full scan would read images
                _check_not_null(pf, shard.path, needed)
            _check_finite(pf, shard.path)
            if subtask_ids is None:
                rows += pf.metadata.num_rows
            else:
                col = pf.read(columns=["subtask"]).column("subtask").to_pylist()
                rows += sum(1 for s in col if s in subtask_ids)
    return DatasetInfo(str(root.resolve()), list(configs), split, rows, load_stats_for(root, None))


def _check_not_null(pf, path: Path, needed: list[str]) -> None:
    """The first row of each needed column holds a value (a dataset recorded without depth stores nulls)."""
    if pf.metadata.num_rows == 0:
        return
    first = next(pf.iter_batches(batch_size=1, columns=needed)).to_pylist()[0]
    empty = [c for c in needed if first[c] is None or (isinstance(first[c], dict) and first[c].get("bytes")
                                                       is None and first[c].get("path") is None)]
    if empty:
        raise SgvlaError(f"dataset shard {path} stores no values for {empty} that this preset needs: use a "
                         "dataset recorded with them or drop them from model.views / model.aux_decoders")


#: Float vector columns whose every value must be finite: one NaN in an action or a label makes the
#: losses NaN a few steps in, and Adam then writes NaN into the weights.
FINITE_COLUMNS = ("action", "qpos", "base_pose", "obj_pose")


def _check_finite(pf, path: Path) -> None:
    """Every value of the float vector columns is finite (a cheap read: no image column)."""
    import numpy as np

    cols = [c for c in FINITE_COLUMNS if c in pf.schema_arrow.names]
    table = pf.read(columns=cols)
    for c in cols:
        values = np.asarray(table.column(c).combine_chunks().flatten(), dtype=np.float64).reshape(table.num_rows, -1)
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            raise SgvlaError(f"dataset shard {path} has NaN/inf in column {c!r} ({bad.size} row(s), first: row "
                             f"{bad[0]}): training on it would produce a NaN model; find the episode with "
                             "`sgvla validate` and record it again")


def _inspect_hub(repo_id: str, cfg: TrainConfig, needed: list[str]) -> DatasetInfo:
    from huggingface_hub import constants

    with reach_within(f"the Hugging Face Hub at {constants.ENDPOINT} for --dataset {repo_id!r}",
                      "check the repo id, the network (or HF_ENDPOINT), or pass a local dataset folder"):
        return _read_hub_info(repo_id, cfg, needed)


def _read_hub_info(repo_id: str, cfg: TrainConfig, needed: list[str]) -> DatasetInfo:
    try:
        from datasets import get_dataset_config_names, load_dataset_builder

        from sgvla.dataset.torch_dataset import load_stats_for

        have = get_dataset_config_names(repo_id)
        configs = cfg.data.configs or have
        rows = 0
        for config in configs:
            info = load_dataset_builder(repo_id, config).info
            lacking = [c for c in needed if c not in (info.features or {})]
            if lacking:
                raise SgvlaError(f"dataset {repo_id} config {config!r} has no column(s) {lacking} that this "
                                 "preset needs: use another dataset or change model.views / aux_decoders")
            split = (info.splits or {}).get(cfg.data.split)
            rows += split.num_examples if split else 0
        stats = load_stats_for(repo_id, None)
    except SgvlaError:
        raise
    except Exception as e:  # network, auth, missing repo: all the user's to fix
        raise SgvlaError(f"--dataset {repo_id!r} is no local folder and cannot be read from the Hugging Face "
                         f"Hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): check the "
                         "path, or the repo id, your login (HF_TOKEN) and the network") from None
    return DatasetInfo(repo_id, list(configs), cfg.data.split, rows, stats)


def inspect_dataset(dataset: str, cfg: TrainConfig, model_config) -> DatasetInfo:
    """Check that `dataset` has what `cfg`'s model reads; return its selection and statistics."""
    needed = required_columns(model_config)
    if _is_local(dataset):
        info = _inspect_local(Path(dataset).expanduser(), cfg, needed)
    else:
        info = _inspect_hub(dataset, cfg, needed)
    if 0 < info.num_rows < cfg.train.global_batch_size:
        raise SgvlaError(f"the selected data has {info.num_rows} samples, fewer than one optimizer step "
                         f"(train.global_batch_size={cfg.train.global_batch_size}): lower it with --set "
                         "train.global_batch_size=... or use more data")
    if info.num_rows == 0:
        raise SgvlaError(f"dataset {dataset} has no {cfg.data.split!r} rows for configs {info.configs} and "
                         f"subtasks {cfg.data.subtasks or 'all'}: check data.configs / split / subtasks")
    if cfg.data.action_normalization == "none":
        info.stats = unit_action_range(info.stats)
    return info


def unit_action_range(stats: dict) -> dict:
    """`stats` with the action's q01/q99 at -1/+1, so that normalising the dataset's actions and the
    trained model's un-normalising (it keeps the run's statistics in its config) are both the
    identity: data.action_normalization=none in the one place every consumer reads."""
    action = dict(stats["action"])
    dim = len(action["q01"])
    action["q01"], action["q99"] = [-1.0] * dim, [1.0] * dim
    return {**stats, "action": action}


# ---------------------------------------------------------------------------------------------
# The output folder


def check_tracking(cfg: TrainConfig) -> None:
    """W&B is optional: name the missing package here rather than in a worker's traceback."""
    import importlib.util

    if cfg.train.wandb and importlib.util.find_spec("wandb") is None:
        raise SgvlaError(f"train.wandb={cfg.train.wandb!r} but the wandb package is not installed: "
                         "`pip install 'sgvla[wandb]'` (or wandb) into this environment, or drop train.wandb")


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def check_output(output: Path, resume: bool, cfg: TrainConfig, dataset: str) -> dict | None:
    """Refuse to mix runs in one folder; for --resume, check the run can continue. Returns run.json."""
    output = Path(output)
    run_file = output / RUN_FILE
    prior = load_json(run_file, "delete it and re-run with --resume (the checkpoints still record their "
                                "config), or choose a new --output") if run_file.is_file() else None
    if prior is not None and _never_started(output):
        # run.json is written before Ray starts: a start that failed there (no CPUs, no cluster) took
        # no step and saved nothing, so the folder is free for the corrected command, with or without
        # --resume.
        print(f"note: {output} holds a run that never took a step; starting it anew")
        return None
    if prior is None:
        if resume and not (output / CHECKPOINT_DIR).is_dir():
            raise SgvlaError(f"--resume: {output} holds no run to continue (no {RUN_FILE}): drop --resume to "
                             "start a new run there")
        if output.exists() and any(p.name != ".gitkeep" for p in output.iterdir()) and not resume:
            raise SgvlaError(f"--output {output} is not empty and holds no sgvla run: choose a new or "
                             "empty folder")
        return None
    if not resume:
        raise SgvlaError(f"--output {output} already holds a training run: pass --resume to continue it or "
                         "choose another --output")
    if prior.get("fingerprint") != cfg.compat_fingerprint():
        changed = _diff(prior.get("compat", {}), cfg.compat_view())
        raise SgvlaError(f"--resume: the checkpoint in {output} was trained with a different "
                         f"{', '.join(changed) or 'model/data/batch setup'}: use that run's config "
                         f"({output / CONFIG_FILE}) or a new --output")
    if prior.get("dataset") != dataset:
        raise SgvlaError(f"--resume: {output} was trained on {prior.get('dataset')!r}, not {dataset!r}: pass "
                         "the same --dataset or use a new --output")
    latest = latest_checkpoint(output / CHECKPOINT_DIR)
    if latest is not None and read_state(latest).fingerprint != cfg.compat_fingerprint():
        raise SgvlaError(f"--resume: checkpoint {latest} belongs to another configuration: use a new "
                         "--output")
    return prior


def _never_started(output: Path) -> bool:
    return latest_checkpoint(output / CHECKPOINT_DIR) is None and not (output / METRICS_FILE).is_file()


def write_run_file(output: Path, cfg: TrainConfig, dataset: str, workers: int) -> None:
    """Record what the run is (so a later --resume can be checked) and its resolved config."""
    from sgvla.dataset.atomic import write_json_atomic, write_text_atomic

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / CONFIG_FILE, cfg.to_yaml())
    write_json_atomic(output / RUN_FILE, {"fingerprint": cfg.compat_fingerprint(), "dataset": dataset,
                                          "workers": workers, "compat": cfg.compat_view(),
                                          "run_id": uuid.uuid4().hex[:12], "software": software()})


def run_id(output: Path) -> str:
    """The run's own id (experiment trackers use it, so a resumed run continues its record); runs
    from before run.json kept one get a stable id derived from their folder and fingerprint."""
    info = load_json(Path(output) / RUN_FILE, "delete it and start the run anew")
    if info.get("run_id"):
        return str(info["run_id"])
    return hashlib.sha256(f"{Path(output).resolve()}|{info.get('fingerprint')}".encode()).hexdigest()[:12]
