"""`sgvla push-model`: the card, the checks before uploading, and loading the pushed folder by Hub id.

The Hub cannot be reached from the tests: the upload test patches `HfApi`'s calls and checks their
arguments; loading by id runs from a local Hugging Face cache laid out as a download leaves it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi

from sgvla.errors import SgvlaError
from sgvla.eval.report import aggregate, write_results
from sgvla.model import SGVLAConfig, SGVLAForActionPrediction, SGVLAProcessor, save_policy
from sgvla.train.config import config_from_dict
from sgvla.train.publish import push_model

STATS = {"mean": [0.0] * 13, "std": [1.0] * 13, "min": [-3.0] * 13, "max": [3.0] * 13,
         "q01": [-1.0] * 13, "q99": [1.0] * 13}
REPO = "someone/sgvla-tiny"


@pytest.fixture()
def run(tmp_path) -> Path:
    """A finished run folder as `sgvla train` leaves it (final model, config, run.json, metrics)."""
    root = tmp_path / "runs" / "r1"
    torch.manual_seed(0)
    config = SGVLAConfig.from_preset("tiny", action_stats=STATS)
    save_policy(SGVLAForActionPrediction(config), SGVLAProcessor.from_config(config), root / "model")
    cfg = config_from_dict({"model": {"preset": "tiny", "aux_decoders": ["qpos", "grasp"]}})
    (root / "config.yaml").write_text(cfg.to_yaml())
    (root / "run.json").write_text(json.dumps({"dataset": str(tmp_path / "data" / "kitchen_ds"), "workers": 1}))
    (root / "metrics.jsonl").write_text(json.dumps({"global_step": 40, "samples": 640}) + "\n")
    return root


def _eval_out(folder: Path, model: Path, split: str = "val") -> Path:
    records = [{"subtask": "close", "seed": 1_000_000 + i, "success": i < 3, "steps": 120, "failure": None,
                "video": None, "effect_once": i < 4} for i in range(5)]
    write_results(folder, {"model": str(model), "task": "mini_kitchen", "mode": "tokens", "split": split,
                           "seed": 0, "episodes": records, "aggregate": aggregate(records)})
    return folder


def test_card_reports_attached_results_and_no_local_paths(run, tmp_path, capsys):
    ev = _eval_out(tmp_path / "ev", run / "model")
    plan = push_model(run, REPO, results=[ev], dry_run=True)
    card = (run / "model" / "README.md").read_text()
    assert "| val | 1000000..1000004 | tokens |" in card and "0.60 (3/5)" in card
    assert "`kitchen_ds`" in card and str(tmp_path) not in card  # the dataset by name, no machine path
    assert "qpos, grasp" in card and "40 optimizer steps" in card and "arxiv.org/abs/2603.22760" in card
    assert f'load_policy("{REPO}")' in card and "@article{" in card
    sent = {f for f, _ in plan}
    assert {"README.md", "config.json", "model.safetensors", "training_config.yaml"} <= sent
    assert "would upload" in capsys.readouterr().out


def test_results_of_the_run_folder_count_as_its_final_model(run, tmp_path):
    """`sgvla eval --model RUN` records RUN, and evaluates RUN/model: the card takes its results."""
    push_model(run, REPO, results=[_eval_out(tmp_path / "ev", run)], dry_run=True)
    assert "0.60 (3/5)" in (run / "model" / "README.md").read_text()


def test_card_without_results_says_so(run):
    push_model(run, REPO, dry_run=True)
    assert "No closed-loop evaluation is attached" in (run / "model" / "README.md").read_text()


def test_refusals_name_the_problem(run, tmp_path):
    other = _eval_out(tmp_path / "ev_other", tmp_path / "runs")  # evaluated another model
    cases = [
        (dict(run=run, repo_id="no-slash"), "USER/NAME"),
        (dict(run=tmp_path, repo_id=REPO), "not a training run"),
        (dict(run=run, repo_id=REPO, results=[tmp_path / "missing"]), "no results.json"),
        (dict(run=run, repo_id=REPO, results=[other]), "attach results of the model being pushed only"),
    ]
    for kwargs, words in cases:
        with pytest.raises(SgvlaError, match=words):
            push_model(dry_run=True, **kwargs)
    shutil.rmtree(run / "model")
    with pytest.raises(SgvlaError, match="has not finished.*--resume"):
        push_model(run, REPO, dry_run=True)


def test_nan_weights_are_never_pushed(run):
    from safetensors.torch import load_file, save_file

    f = run / "model" / "model.safetensors"
    state = load_file(str(f))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key][...] = float("nan")
    save_file(state, str(f), metadata={"format": "pt"})
    with pytest.raises(SgvlaError, match="NaN"):
        push_model(run, REPO, dry_run=True)


def test_upload_sends_the_model_folder_to_a_model_repo(run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    with mock.patch.object(HfApi, "create_repo") as create, mock.patch.object(HfApi, "upload_folder") as upload:
        push_model(run, REPO, private=True)
    assert create.call_args.args[0] == REPO
    assert create.call_args.kwargs.items() >= {"repo_type": "model", "private": True}.items()
    kw = upload.call_args.kwargs
    assert Path(kw["folder_path"]) == run / "model" and kw["repo_type"] == "model"


def test_from_pretrained_by_hub_id_loads_the_pushed_folder(run, tmp_path):
    """The folder push-model uploads, laid out in a Hub cache as a download leaves it, loads by id
    offline (model and eval's checkpoint resolution) with the same weights as the folder itself."""
    push_model(run, REPO, dry_run=True)
    cache = tmp_path / "hub"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(run / "model", repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    code = f"""
import torch
from transformers import AutoProcessor
from sgvla.model import SGVLAProcessor, load_policy
a, pa = load_policy({REPO!r})
b, pb = load_policy({str(run / "model")!r})
sa, sb = a.state_dict(), b.state_dict()
assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
assert pa.to_dict() == pb.to_dict() and len(pa.tokenizer) == len(pb.tokenizer)
assert isinstance(AutoProcessor.from_pretrained({REPO!r}), SGVLAProcessor)
from sgvla.errors import SgvlaError
from sgvla.eval.policies import resolve_checkpoint
assert resolve_checkpoint({REPO!r}).name == {commit!r}  # what `sgvla eval --model USER/NAME` loads
try:
    resolve_checkpoint("someone/not-cached")
except SgvlaError as e:
    assert "cannot be read from the Hugging Face Hub" in str(e), e
else:
    raise AssertionError("an uncached repo id while offline must be an SgvlaError")
print("same")
"""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "same" in res.stdout, res.stderr[-2000:]
