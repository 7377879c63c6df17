"""A study file: which rows (a training config plus overrides and an evaluation mode) are trained
with which seeds, on which data, and how each cell is evaluated.

    name: table3_small
    dataset: ../../outputs/cpu_recipe/dataset    # relative to this file, or a Hub id
    seeds: [0, 1, 2]                              # training seeds (train.seed) of every row
    eval: {episodes: 30, subtask: all, mode: tokens, workers: 2}
    train: {workers: 1, gpus_per_worker: 0}
    rows:
      - {name: no aux, config: ../cpu_recipe.yaml, set: ["model.aux_decoders=[]"]}
      - {name: flow, config: ../cpu_recipe.yaml, mode: flow}   # same training as another row: trained once
      - {name: expert on a VLA, config: ../stage3.yaml, init_from: ../runs/vla-seed{seed}/model, mode: flow}
      - {name: expert on a row, config: ../stage3.yaml, mode: flow,
         init_from: {study: table3_small.yaml, out: ../../outputs/t3, row: no aux}}

Rows whose training config (after overrides) is identical share their runs: Table 5 compares two
evaluation modes of one trained model, not two trainings. `init_from` starts each cell from a
saved model (`{seed}` becomes the cell's training seed), e.g. the VLA of another study's cell of
the same seed, so that a stage-3-only row adds a flow expert to it without training a VLA again.
Naming that cell by study file, output folder and row, rather than by its run folder, keeps the
reference valid when the folder's name changes (it hashes the row's whole training config).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sgvla.errors import SgvlaError

EVAL_MODES = ("auto", "tokens", "flow")
_KEYS = {"name", "dataset", "task", "seeds", "eval", "train", "rows"}
_ROW_KEYS = {"name", "config", "set", "mode", "subtask", "init_from"}


@dataclass(frozen=True)
class Row:
    name: str
    config: Path
    overrides: tuple[str, ...]
    mode: str
    subtask: str
    train_key: str  # identical trainings share one key (and one run per seed)
    init_from: str | None = None  # a model folder to start from; "{seed}" is the cell's seed

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower() or "row"


def run_dir(out: Path, train_key: str, seed: int | str) -> Path:
    """One training's folder in a study's output; `seed` may be the placeholder "{seed}"."""
    return Path(out) / "runs" / f"{train_key}-seed{seed}"


@dataclass(frozen=True)
class Cell:
    row: Row
    seed: int

    def run_dir(self, out: Path) -> Path:
        return run_dir(out, self.row.train_key, self.seed)

    def eval_dir(self, out: Path) -> Path:
        return Path(out) / "evals" / self.row.slug / f"seed-{self.seed}"

    @property
    def init_from(self) -> str | None:
        return None if self.row.init_from is None else self.row.init_from.replace("{seed}", str(self.seed))


@dataclass
class Study:
    name: str
    path: Path
    dataset: str
    task: str
    seeds: tuple[int, ...]
    episodes: int
    eval_workers: int
    max_steps: int | None
    train_workers: int
    gpus_per_worker: float
    rows: list[Row] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        return [Cell(r, s) for r in self.rows for s in self.seeds]

    def fingerprint(self) -> str:
        """What a study folder's results depend on: refuse to mix two studies in one --out."""
        doc = {"dataset": self.dataset, "task": self.task, "episodes": self.episodes, "max_steps": self.max_steps,
               "rows": [(r.name, r.train_key, r.mode, r.subtask) for r in self.rows]}
        return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _train_key(config: Path, overrides: tuple[str, ...]) -> str:
    from sgvla.train.config import load_config

    cfg = load_config(config, list(overrides))  # validates the row before anything runs
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{config.stem}-{digest}"


def _local(base: Path, value: str) -> str:
    """Paths are relative to the study file (a value starting with `.`, `/` or `~`, or one that
    exists there); anything else is kept as given (a Hub id such as USER/NAME)."""
    p = (base / Path(value).expanduser()).resolve()
    return str(p) if value.startswith((".", "/", "~")) or p.exists() else value


def _row_model(base: Path, ref: object, where: str, seen: tuple[Path, ...]) -> str:
    """`init_from: {study, out, row}`: that study's row's model of the cell's seed, as a path with
    "{seed}" left in (the referenced study need not have run yet: its cells' folders are known)."""
    if not isinstance(ref, dict) or set(ref) != {"study", "out", "row"}:
        raise SgvlaError(f"{where}: init_from is a model path or {{study: FILE, out: DIR, row: NAME}}, got {ref!r}")
    try:
        other = load_study(Path(_local(base, str(ref["study"]))), _seen=seen)
    except SgvlaError as e:
        raise SgvlaError(f"{where}: init_from: {e}") from None
    rows = {r.name: r for r in other.rows}
    if ref["row"] not in rows:
        raise SgvlaError(f"{where}: init_from row {ref['row']!r} is not a row of {ref['study']} "
                         f"(its rows: {', '.join(map(repr, rows))})")
    return str(run_dir(Path(_local(base, str(ref["out"]))), rows[ref["row"]].train_key, "{seed}") / "model")


def load_study(path: Path, dataset: str | None = None, _seen: tuple[Path, ...] = ()) -> Study:
    """Parse and check a study file (every row's config is loaded and validated)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise SgvlaError(f"study file {path} refers back to itself through init_from: {list(map(str, _seen))}")
    _seen = (*_seen, path.resolve())
    if not path.is_file():
        raise SgvlaError(f"study file {path} does not exist: give a YAML file such as configs/studies/*.yaml")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SgvlaError(f"study file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not doc.get("rows"):
        raise SgvlaError(f"study file {path} needs a `rows:` list (see configs/studies/)")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise SgvlaError(f"study file {path}: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    base = path.parent
    data = dataset or doc.get("dataset")
    if not data:
        raise SgvlaError(f"study file {path} names no dataset: add `dataset:` or pass --dataset")
    ev, tr = dict(doc.get("eval") or {}), dict(doc.get("train") or {})
    seeds = tuple(int(s) for s in doc.get("seeds", [0]))
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SgvlaError(f"study file {path}: seeds must be distinct integers >= 0, got {list(seeds)}")
    study = Study(name=str(doc.get("name") or path.stem), path=path.resolve(), dataset=_local(base, str(data)),
                  task=str(doc.get("task", "mini_kitchen")), seeds=seeds, episodes=int(ev.get("episodes", 30)),
                  eval_workers=int(ev.get("workers", 1)), max_steps=ev.get("max_steps"),
                  train_workers=int(tr.get("workers", 1)), gpus_per_worker=float(tr.get("gpus_per_worker", 0)))
    if study.episodes < 1 or study.eval_workers < 1 or study.train_workers < 1:
        raise SgvlaError(f"study file {path}: eval.episodes, eval.workers and train.workers must be >= 1")
    names = set()
    for i, r in enumerate(doc["rows"]):
        if not isinstance(r, dict) or "name" not in r or "config" not in r:
            raise SgvlaError(f"study file {path}: row {i + 1} needs `name:` and `config:`")
        extra = sorted(set(r) - _ROW_KEYS)
        if extra:
            raise SgvlaError(f"study file {path}, row {r['name']!r}: unknown key(s) {extra}; "
                             f"known: {sorted(_ROW_KEYS)}")
        if r["name"] in names:
            raise SgvlaError(f"study file {path}: two rows are named {r['name']!r}")
        names.add(r["name"])
        config = Path(_local(base, str(r["config"])))
        if not config.is_file():
            raise SgvlaError(f"study file {path}, row {r['name']!r}: config {r['config']} does not exist "
                             f"(paths are relative to the study file)")
        mode = str(r.get("mode", ev.get("mode", "auto")))
        if mode not in EVAL_MODES:
            raise SgvlaError(f"study file {path}, row {r['name']!r}: mode {mode!r} is not one of {EVAL_MODES}")
        overrides = tuple(str(s) for s in (r.get("set") or []))
        init_from = r.get("init_from")
        if isinstance(init_from, dict):
            init_from = _row_model(base, init_from, f"study file {path}, row {r['name']!r}", _seen)
        elif init_from:
            init_from = _local(base, str(init_from))
        try:
            key = _train_key(config, overrides + ((f"model.init_from={init_from}",) if init_from else ()))
        except SgvlaError as e:
            raise SgvlaError(f"study file {path}, row {r['name']!r}: {e}") from None
        study.rows.append(Row(str(r["name"]), config, overrides, mode, str(r.get("subtask", ev.get("subtask", "all"))),
                              key, init_from))
    return study
