"""`sgvla study`: a grid trained and evaluated for real (tiny steps), resumable, failures recorded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sgvla import provenance
from sgvla.cli import app
from sgvla.errors import SgvlaError
from sgvla.study.report import seed_interval
from sgvla.study.spec import load_study

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SHORT = ["stage1.max_steps=2", "stage2.max_steps=2", "stage3.max_steps=2"]


def _study(tmp_path: Path, rows: list[dict], seeds=(0,)) -> Path:
    import yaml

    path = tmp_path / "study.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": "smoke", "dataset": "data", "seeds": list(seeds),
                                    "eval": {"episodes": 1, "subtask": "pick", "mode": "tokens", "workers": 1,
                                             "max_steps": 3},
                                    "rows": rows}))
    return path


def test_seed_interval_is_a_student_t_interval():
    assert seed_interval([0.5]) is None
    lo, hi = seed_interval([0.2, 0.4, 0.6])  # mean 0.4, sd 0.2, t(2) = 4.303
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.4 + 4.303 * 0.2 / 3 ** 0.5)


def test_bad_study_files_are_one_line(tmp_path):
    runner = CliRunner()
    cases = [
        (tmp_path / "missing.yaml", "does not exist"),
        (_study(tmp_path, [{"name": "a", "config": "nowhere.yaml"}]), "config nowhere.yaml does not exist"),
    ]
    for path, words in cases:
        res = runner.invoke(app, ["study", str(path), "--out", str(tmp_path / "out")])
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    with pytest.raises(SgvlaError, match="row 'a'.*stage9"):
        load_study(_study(tmp_path, [{"name": "a", "config": str(TINY), "set": ["stage9.epochs=1"]}]))


def test_rows_with_one_training_share_the_run(tmp_path):
    study = load_study(_study(tmp_path, [{"name": "tokens", "config": str(TINY)},
                                         {"name": "flow", "config": str(TINY), "mode": "flow"},
                                         {"name": "other", "config": str(TINY), "set": ["optim.lr=0.1"]}]),
                       dataset=str(tmp_path))
    keys = [r.train_key for r in study.rows]
    assert keys[0] == keys[1] != keys[2]


def test_init_from_starts_each_cell_from_its_own_seeds_model(tmp_path):
    """A stage-3 row on finished VLAs: `{seed}` picks each cell's model, paths are relative to the
    study file, and the start point is part of what a shared run means."""
    from sgvla.study.run import _train_args

    rows = [{"name": "tokens", "config": str(TINY), "init_from": "../vla/seed{seed}/model"},
            {"name": "flow", "config": str(TINY), "init_from": "../vla/seed{seed}/model", "mode": "flow"},
            {"name": "fresh", "config": str(TINY)}]
    study = load_study(_study(tmp_path / "s", rows, seeds=(0, 4)), dataset=str(tmp_path))
    keys = [r.train_key for r in study.rows]
    assert keys[0] == keys[1] != keys[2]
    cell = next(c for c in study.cells if c.row.name == "flow" and c.seed == 4)
    assert cell.init_from == str(tmp_path / "vla" / "seed4" / "model")
    args = _train_args(study, cell, tmp_path / "out", "127.0.0.1:1")
    assert f"model.init_from={tmp_path / 'vla' / 'seed4' / 'model'}" in args and "train.seed=4" in args
    with pytest.raises(SgvlaError, match="unknown key.*init_form"):
        load_study(_study(tmp_path / "t", [{"name": "a", "config": str(TINY), "init_form": "x"}]))


def test_init_from_can_name_another_studys_row(tmp_path):
    """`{study, out, row}` resolves to that row's run folder (its name hashes the row's config, so
    a path written by hand goes stale); a wrong row or a study naming itself is a clear error."""
    vla = _study(tmp_path / "vla", [{"name": "no aux", "config": str(TINY)},
                                    {"name": "lr", "config": str(TINY), "set": ["optim.lr=0.1"]}], seeds=(0, 4))
    ref = {"study": "../vla/study.yaml", "out": "../outputs/vla", "row": "lr"}
    study = load_study(_study(tmp_path / "t5", [{"name": "flow", "config": str(TINY), "init_from": ref}], seeds=(4,)),
                       dataset=str(tmp_path))
    target = next(c for c in load_study(vla).cells if c.row.name == "lr" and c.seed == 4)
    assert study.cells[0].init_from == str(target.run_dir(tmp_path / "outputs" / "vla") / "model")
    with pytest.raises(SgvlaError, match="row 'nope' is not a row of .*'no aux', 'lr'"):
        load_study(_study(tmp_path / "bad", [{"name": "f", "config": str(TINY), "init_from": {**ref, "row": "nope"}}]))
    with pytest.raises(SgvlaError, match="row 'f'.*init_from: study file .*nowhere.yaml does not exist"):
        load_study(_study(tmp_path / "bad", [{"name": "f", "config": str(TINY),
                                              "init_from": {**ref, "study": "nowhere.yaml"}}]))
    with pytest.raises(SgvlaError, match="init_from is a model path or"):
        load_study(_study(tmp_path / "bad", [{"name": "f", "config": str(TINY), "init_from": {"study": "x"}}]))
    loop = {"study": "study.yaml", "out": "o", "row": "f"}
    with pytest.raises(SgvlaError, match="refers back to itself"):
        load_study(_study(tmp_path / "loop", [{"name": "f", "config": str(TINY), "init_from": loop}]))
    # run before the study it starts from: its cells wait (nothing recorded), they do not fail
    res = CliRunner().invoke(app, ["study", str(tmp_path / "t5" / "study.yaml"), "--out", str(tmp_path / "o5"),
                                   "--dataset", str(tmp_path)])
    assert res.exit_code == 0 and "1 cell(s) wait for the model they start from" in res.output, res.output
    assert not list((tmp_path / "o5").rglob("cell.json"))


def test_report_shows_the_effect_rate_beside_success(tmp_path):
    """Where success is rare, the subtask's effect reached at some step is what tells rows apart."""
    from sgvla.study.report import markdown, summarize

    study = load_study(_study(tmp_path, [{"name": "a", "config": str(TINY)}], seeds=(0, 1)), dataset=str(tmp_path))

    def cell(seed, successes, effect):
        per = {"close": {"successes": successes, "episodes": 20, "success_rate": successes / 20,
                         "wilson95": [0.0, 0.3], "effect_rate": effect}}
        return {"row": "a", "seed": seed, "status": "done", "per_subtask": per, "average": successes / 20}

    rows = summarize(study, [cell(0, 0, 0.25), cell(1, 2, 0.45)])
    assert rows[0]["effect"]["close"]["mean"] == pytest.approx(0.35) and rows[0]["effect"]["close"]["n_seeds"] == 2
    md = markdown(study, rows, [cell(0, 0, 0.25), cell(1, 2, 0.45)], "sgvla study x")
    assert "effect reached" in md and "| a | 0.35 [" in md and "| a | 0.05 [" in md


def test_pending_cells_run_seed_by_seed(tmp_path):
    """An interrupted study should hold every row of its first seeds, not every seed of its first rows."""
    from sgvla.study.run import pending_groups

    study = load_study(_study(tmp_path, [{"name": "a", "config": str(TINY)},
                                         {"name": "b", "config": str(TINY), "set": ["optim.lr=0.1"]}],
                              seeds=(3, 1)), dataset=str(tmp_path))
    order = [(c.row.name, c.seed) for cells in pending_groups(study, tmp_path / "out", False).values() for c in cells]
    assert order == [("a", 3), ("b", 3), ("a", 1), ("b", 1)]


def test_only_picks_cells_and_names_a_bad_pick(tmp_path):
    """--only shares one study out over machines or sessions: ROW@SEED, ROW or @SEED."""
    from sgvla.study.run import select_cells

    study = load_study(_study(tmp_path, [{"name": "a", "config": str(TINY)},
                                         {"name": "b@2", "config": str(TINY), "set": ["optim.lr=0.1"]}],
                              seeds=(0, 2)), dataset=str(tmp_path))
    pick = lambda *only: [(c.row.name, c.seed) for c in select_cells(study, list(only))]  # noqa: E731
    assert pick() == [("a", 0), ("a", 2), ("b@2", 0), ("b@2", 2)]
    assert pick("a@2", "@0") == [("a", 2), ("a", 0), ("b@2", 0)]
    assert pick("b@2") == [("b@2", 0), ("b@2", 2)] and pick("b@2@0", "a", "a@0") == [("b@2", 0), ("a", 0), ("a", 2)]
    with pytest.raises(SgvlaError, match=r"--only 'c@0': the study has no row 'c'; its rows: \['a', 'b@2'\]"):
        select_cells(study, ["c@0"])
    with pytest.raises(SgvlaError, match=r"--only 'a@1': '1' is not one of the study's seeds \[0, 2\]"):
        select_cells(study, ["a@1"])


def test_parallel_groups_get_the_cpus_they_ask_for(tmp_path):
    """An evaluation on 2 workers beside a training on 1 is 3 logical CPUs: a private Ray sized to
    a 2-core machine would leave the training unplaced until Ray Train gives up."""
    import yaml

    from sgvla.study.run import private_cpus

    path = _study(tmp_path, [{"name": "a", "config": str(TINY), "set": ["train.cpus_per_worker=1.5"]}])
    doc = yaml.safe_load(path.read_text())
    doc["eval"]["workers"] = 2
    path.write_text(yaml.safe_dump(doc))
    study = load_study(path, dataset=str(tmp_path))
    assert private_cpus(study, 1) == max(os.cpu_count() or 1, 2)
    assert private_cpus(study, 3) == max(os.cpu_count() or 1, 6)
    study.train_workers = 2
    assert private_cpus(study, 3) == max(os.cpu_count() or 1, 9)


@pytest.mark.slow
def test_study_runs_resumes_and_records_a_failed_cell(tmp_path):
    from sgvla.dataset.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", episodes={"train": [20, 20]})
    path = _study(tmp_path, [{"name": "tokens", "config": str(TINY), "set": SHORT},
                             {"name": "flow", "config": str(TINY), "set": SHORT, "mode": "flow"},
                             {"name": "broken", "config": str(TINY), "set": [*SHORT, "train.micro_batch_size=3"]}])
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["study", str(path), "--out", str(out), "--parallel", "2"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "study.json").read_text())
    status = {c["row"]: c["status"] for c in report["cells"]}
    assert status == {"tokens": "done", "flow": "done", "broken": "failed"}
    broken = next(c for c in report["cells"] if c["row"] == "broken")
    assert "micro_batch_size" in broken["reason"]
    assert len([p for p in (out / "runs").iterdir() if p.is_dir()]) == 1, "tokens and flow share one training"
    done = [c for c in report["cells"] if c["status"] == "done"]
    assert all(len(c["episodes"]) == 1 and c["episodes"][0]["seed"] >= 1_000_000 for c in done)  # val episodes
    assert {c["mode"] for c in done} == {"tokens", "flow"}
    assert all(c["software"] == provenance.software() for c in done)  # what measured each cell
    assert (out / "study.png").stat().st_size > 0 and "| tokens |" in (out / "results.md").read_text()

    # Re-run: nothing finished is recomputed; a cell whose process was killed (no record) is redone.
    results = {c: (out / "evals" / c / "seed-0" / "results.json") for c in ("tokens", "flow")}
    before = {c: p.stat().st_mtime_ns for c, p in results.items()}
    shutil.rmtree(out / "evals" / "flow")
    res = runner.invoke(app, ["study", str(path), "--out", str(out), "--only", "tokens@0"])  # flow not picked
    assert res.exit_code == 0 and "--only picks 1 of them, 1 already finished, 0 run group(s)" in res.output, res.output
    assert {c["row"]: c["status"] for c in json.loads((out / "study.json").read_text())["cells"]}["flow"] == "pending"
    res = runner.invoke(app, ["study", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert results["tokens"].stat().st_mtime_ns == before["tokens"]
    assert results["flow"].is_file()
    status = {c["row"]: c["status"] for c in json.loads((out / "study.json").read_text())["cells"]}
    assert status == {"tokens": "done", "flow": "done", "broken": "failed"}  # failed: kept, not retried
    other = _study(tmp_path / "o", [{"name": "tokens", "config": str(TINY), "set": [*SHORT, "optim.lr=0.5"]}])
    (tmp_path / "o" / "data").symlink_to(tmp_path / "data")
    res = runner.invoke(app, ["study", str(other), "--out", str(out)])
    assert res.exit_code == 2 and "use a new --out" in res.output, res.output


def test_shipped_study_files_load():
    """Every study under configs/studies/ parses and its rows' configs validate."""
    files = sorted((ROOT / "configs" / "studies").glob("*.yaml"))
    assert {f.stem for f in files} >= {f"table{t}_{s}" for t in (3, 4, 5) for s in ("small", "paper")}
    for f in files:
        study = load_study(f, dataset="someone/data" if "paper" in f.stem else None)
        assert len(study.seeds) >= 3 and study.rows
        if "small" in f.stem:
            assert study.dataset == str(ROOT / "outputs" / "cpu_recipe" / "dataset")


def test_small_table4_studies_ask_the_papers_question():
    """The CPU-scale Table 4 studies compare the decoder sets of the paper-scale one (no decoders,
    then mask and object pose), not some other pair: their reading is set against the paper's."""
    from sgvla.train.config import load_config

    def decoders(name: str) -> list[list[str]]:
        study = load_study(ROOT / "configs" / "studies" / f"{name}.yaml", dataset="someone/data")
        return [sorted(load_config(r.config, list(r.overrides)).model.aux_decoders) for r in study.rows]

    assert decoders("table4_paper") == [[], ["mask", "obj_pose"]]
    assert decoders("table4_small") == decoders("table4_place48") == decoders("table4_paper")


def test_a_killed_or_interrupted_cell_is_retried_not_failed():
    from sgvla.study.run import _failure

    assert _failure(-9) == _failure(130) == "interrupted"  # kill -9; Ctrl-C / SIGTERM (sgvla exits 130)
    assert _failure(2) == _failure(1) == "failed"  # an error of the cell itself
