"""Run a study's pending cells on Ray; resumable.

The unit of work is a *run group*: one training (a row's config and overrides, one seed) and the
evaluations of every row that shares it. A group is one Ray task that runs `sgvla train` and then
`sgvla eval` as subprocesses joined to the study's Ray cluster, so their own workers are scheduled
by Ray like any other job, each command writes its log into the cell, and a crash in one cell
cannot take the driver or another cell down. The task itself holds no CPU (the training and
evaluation workers it starts do).

State lives in files only: a cell is done when its `eval/results.json` and a `cell.json` saying
"done" exist; a cell that failed has a `cell.json` with the reason and is skipped on re-runs
(unless --retry-failed); a cell whose process was killed has neither and is simply run again (its
training resumes from its last checkpoint).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from sgvla.dataset.atomic import folder_lock, write_json_atomic
from sgvla.dataset.layout import read_json
from sgvla.errors import SgvlaError
from sgvla.raysession import RaySession
from sgvla.study.spec import Cell, Study, load_study

CELL_FILE = "cell.json"
PLAN_FILE = "study_plan.json"


def train_log(run_dir: Path) -> Path:
    """Beside the run folder, not in it: `sgvla train` wants an empty or own --output."""
    return run_dir.with_name(run_dir.name + ".train.log")


def cell_status(out: Path, cell: Cell) -> dict | None:
    """The cell's recorded outcome ({"status": "done" | "failed", ...}) or None when it never finished."""
    doc = read_json(cell.eval_dir(out) / CELL_FILE, "delete it: the cell is then run again")
    if doc and doc.get("status") == "done" and not (cell.eval_dir(out) / "results.json").is_file():
        return None
    return doc


def _die_with_parent() -> None:
    """Subprocess hook: end with the Ray worker that started it (Linux), so a cancelled study leaves
    no training running on its own."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _command(args: list[str], log: Path) -> tuple[int, str]:
    """Run `sgvla ARGS`, output appended to `log`; (exit status, the line that says why it failed)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ sgvla {' '.join(args)}\n")
        f.flush()
        rc = subprocess.run([sys.executable, "-m", "sgvla.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent).returncode
    if rc == 0:
        return 0, ""
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return rc, (errors[-1] if errors else (lines[-1] if lines else f"exit status {rc}"))[:500]


def run_group(train: list[str] | None, run_dir: str, evals: list[tuple[str, list[str]]]) -> list[dict]:
    """Train (unless `train` is None: already trained) then evaluate each cell; one outcome per cell."""
    if train is not None:
        rc, why = _command(train, train_log(Path(run_dir)))
        if rc:
            return [{"status": _failure(rc), "stage": "train", "reason": why} for _ in evals]
    outcomes = []
    for folder, args in evals:
        rc, why = _command(args, Path(folder) / "eval.log")
        outcomes.append({"status": "done"} if rc == 0 else {"status": _failure(rc), "stage": "eval", "reason": why})
    return outcomes


def _failure(rc: int) -> str:
    """A command killed by a signal, or stopped by Ctrl-C/SIGTERM (sgvla exits 130 then), was
    interrupted: run it again. Any other non-zero exit is a failure of the cell itself."""
    return "interrupted" if rc < 0 or rc == 130 else "failed"


def _train_args(study: Study, cell: Cell, out: Path, address: str) -> list[str] | None:
    run = cell.run_dir(out)
    if (run / "model" / "config.json").is_file():
        return None
    args = ["train", "--config", str(cell.row.config), "--dataset", study.dataset, "--output", str(run),
            "--workers", str(study.train_workers), "--gpus-per-worker", str(study.gpus_per_worker),
            "--ray-address", address, "--set", f"train.seed={cell.seed}"]
    for o in cell.row.overrides + ((f"model.init_from={cell.init_from}",) if cell.init_from else ()):
        args += ["--set", o]
    return args + (["--resume"] if (run / "run.json").is_file() else [])


def _eval_args(study: Study, cell: Cell, out: Path, address: str) -> list[str]:
    args = ["eval", "--model", str(cell.run_dir(out) / "model"), "--task", study.task, "--subtask", cell.row.subtask,
            "--episodes", str(study.episodes), "--mode", cell.row.mode, "--split", "val",
            "--workers", str(study.eval_workers), "--out", str(cell.eval_dir(out)), "--ray-address", address]
    return args + (["--max-steps", str(study.max_steps)] if study.max_steps else [])


def _check_plan(out: Path, study: Study) -> None:
    doc = read_json(out / PLAN_FILE, "delete it if this folder holds only this study's cells")
    if doc is None:
        write_json_atomic(out / PLAN_FILE, {"study": study.name, "fingerprint": study.fingerprint()})
    elif doc.get("fingerprint") != study.fingerprint():
        raise SgvlaError(f"--out {out} holds study {doc.get('study')!r} with other rows, data or evaluation: "
                         "use a new --out for a different study (finished cells there are kept)")


def select_cells(study: Study, only: list[str] | None) -> list[Cell]:
    """The cells `--only` names (all when it names none): "ROW@SEED", "ROW" (every seed) or "@SEED"
    (every row), so one study can be shared out over machines or sessions into one --out."""
    if not only:
        return study.cells
    names = [r.name for r in study.rows]
    chosen: list[Cell] = []
    for spec in only:
        row, _, seed = spec.rpartition("@") if "@" in spec and spec not in names else (spec, "", "")
        if row and row not in names:
            raise SgvlaError(f"--only {spec!r}: the study has no row {row!r}; its rows: {names} "
                             "(give ROW@SEED, ROW or @SEED)")
        if seed and (not seed.strip().isdigit() or int(seed) not in study.seeds):
            raise SgvlaError(f"--only {spec!r}: {seed!r} is not one of the study's seeds {list(study.seeds)}")
        chosen += [c for c in study.cells if (not row or c.row.name == row) and (not seed or c.seed == int(seed))
                   and c not in chosen]
    return chosen


def pending_groups(study: Study, out: Path, retry_failed: bool,
                   cells: list[Cell] | None = None) -> dict[str, list[Cell]]:
    """Run folder -> the cells still to do that use it, seed by seed (every row of the first seed,
    then of the next): a study stopped part-way holds whole comparisons, not one row's seeds."""
    groups: dict[str, list[Cell]] = {}
    for cell in sorted(study.cells if cells is None else cells,
                       key=lambda c: study.seeds.index(c.seed)):  # stable: rows keep their order
        st = cell_status(out, cell)
        if st is None or (retry_failed and st.get("status") == "failed"):
            groups.setdefault(str(cell.run_dir(out)), []).append(cell)
    return groups


def missing_start(cell: Cell, out: Path) -> str | None:
    """The local model the cell's training starts from, when it is not there yet (the study that
    makes it has not finished that seed): such a cell waits rather than failing, so a re-run after
    that study picks it up without --retry-failed."""
    src = cell.init_from
    if not src or not Path(src).is_absolute() or (cell.run_dir(out) / "model" / "config.json").is_file():
        return None
    return None if (Path(src) / "config.json").is_file() else src


def run_study(study_path: Path, out: Path, dataset: str | None = None, parallel: int = 1,
              ray_address: str | None = None, retry_failed: bool = False, only: list[str] | None = None) -> dict:
    """Run every pending cell of the study (of those `only` names), then write the report; returns it."""
    from sgvla.study.report import write_report

    if parallel < 1:
        raise SgvlaError(f"--parallel must be at least 1 (got {parallel})")
    study = load_study(study_path, dataset)
    cells = select_cells(study, only)
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise SgvlaError(f"--out {out} is a file: give a folder for the study")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "`sgvla study`"):
        _check_plan(out, study)
        groups = pending_groups(study, out, retry_failed, cells)
        done = len(cells) - sum(len(c) for c in groups.values())
        waiting = {k: src for k, c in groups.items() if (src := missing_start(c[0], out))}
        chosen = f"; --only picks {len(cells)} of them" if only else ""
        print(f"study {study.name}: {len(study.cells)} cells ({len(study.rows)} rows x {len(study.seeds)} seeds)"
              f"{chosen}, {done} already finished, {len(groups) - len(waiting)} run group(s) to do", file=sys.stderr)
        if waiting:
            held = sum(len(groups.pop(k)) for k in waiting)
            print(f"{held} cell(s) wait for the model they start from, not "
                  f"there yet ({next(iter(waiting.values()))}): finish the study that writes it, then re-run "
                  "this command", file=sys.stderr)
        if groups:
            _run_groups(study, out, groups, parallel, ray_address)
        return write_report(study, out)


def _run_groups(study: Study, out: Path, groups: dict[str, list[Cell]], parallel: int,
                ray_address: str | None) -> None:
    import ray

    from sgvla.study.report import write_report

    session = RaySession(ray_address, num_cpus=private_cpus(study, parallel)).start()
    try:
        address = ray.get_runtime_context().gcs_address
        task = ray.remote(num_cpus=0, max_retries=0)(run_group)
        todo = list(groups.values())
        inflight: dict = {}
        with tqdm(total=sum(len(c) for c in todo), desc=f"study {study.name}", unit="cell") as bar:
            while todo or inflight:
                while todo and len(inflight) < parallel:
                    cells = todo.pop(0)
                    evals = [(str(c.eval_dir(out)), _eval_args(study, c, out, address)) for c in cells]
                    ref = task.remote(_train_args(study, cells[0], out, address), str(cells[0].run_dir(out)), evals)
                    inflight[ref] = cells
                ready, _ = ray.wait(list(inflight), num_returns=1)
                cells = inflight.pop(ready[0])
                try:
                    outcomes = ray.get(ready[0])
                except ray.exceptions.RayError as e:  # the worker died: nothing recorded, re-run retries
                    outcomes = [{"status": "interrupted", "reason": type(e).__name__} for _ in cells]
                for cell, o in zip(cells, outcomes, strict=True):
                    _record(out, cell, o)
                    bar.update(1)
                    bar.set_postfix_str(f"{cell.row.name} seed {cell.seed}: {o['status']}")
                write_report(study, out, echo=False)  # the tables so far, in case the study is stopped
    finally:
        session.close()


def private_cpus(study: Study, parallel: int) -> float:
    """Logical CPUs of the study's own Ray instance: enough for `parallel` groups at once.

    A group needs its training's or its evaluation's workers, whichever is more; sized to the
    machine alone, two groups of a 2-core machine (an evaluation on 2 workers beside a training)
    would leave one waiting for CPUs until Ray Train gives up. Asking for --parallel is asking to
    share the cores."""
    from sgvla.train.config import load_config

    train = max(load_config(r.config, list(r.overrides)).train.cpus_per_worker for r in study.rows)
    need = max(study.eval_workers, study.train_workers * train)
    return max(float(os.cpu_count() or 1), parallel * need)


def _record(out: Path, cell: Cell, outcome: dict) -> None:
    if outcome["status"] == "interrupted":
        tqdm.write(f"{cell.row.name} seed {cell.seed}: interrupted ({outcome.get('reason')}); re-run to retry")
        return
    if outcome["status"] == "failed":
        log = train_log(cell.run_dir(out)) if outcome["stage"] == "train" else cell.eval_dir(out) / "eval.log"
        tqdm.write(f"{cell.row.name} seed {cell.seed}: FAILED in {outcome['stage']}: {outcome['reason']} "
                   f"(log: {log})")
    write_json_atomic(cell.eval_dir(out) / CELL_FILE, {"row": cell.row.name, "seed": cell.seed, **outcome})
