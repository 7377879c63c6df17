"""Adversarial cases from the hardening issue: each one failed before its fix."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from sgvla.errors import SgvlaError
from sgvla.train.checkpoint import OPTIM_FILE, TrainerState, read_checkpoint, rng_state, set_rng_state, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates `marker`: proof that a load ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint(tmp_path: Path) -> Path:
    state = {"w": torch.arange(4.0)}
    opt = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return write_checkpoint(tmp_path, TrainerState(global_step=3), state, opt, [rng_state()])


def test_resume_never_unpickles_planted_files(tmp_path):
    path = _checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    (path / "rng.pt").write_bytes(pickle.dumps(_Payload(marker)))  # the old RNG file name
    read_checkpoint(path)
    assert not marker.exists()
    (path / OPTIM_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(SgvlaError, match="unreadable"):
        read_checkpoint(path)
    assert not marker.exists()


def test_rng_states_round_trip_as_json(tmp_path):
    import random

    import numpy as np

    saved = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(saved)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_no_unsafe_load_in_the_tree():
    unsafe = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "sgvla").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert not hits, hits


# -- 2: NaN data, NaN loss ---------------------------------------------------------------------
TINY = ROOT / "configs" / "tiny.yaml"


def test_nan_in_the_data_is_refused_before_training(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from sgvla.dataset.synthetic import write_synthetic_dataset
    from sgvla.train.launch import run_train

    data = write_synthetic_dataset(tmp_path / "data", episodes={"train": [4, 4]}, episodes_per_shard=1)
    shard = sorted(data.glob("*/data/*.parquet"))[-1]
    table = pq.read_table(shard)
    i = table.schema.get_field_index("action")
    actions = np.asarray(table.column("action").to_pylist(), dtype=np.float32)
    actions[2, 5] = np.nan  # one value of one row, as a broken recorder would leave it
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(actions.tolist(), table.schema.field(i).type)),
                   shard)
    with pytest.raises(SgvlaError, match=f"{re.escape(str(shard))} has NaN/inf in column 'action'.*row 2"):
        run_train(TINY, str(data), tmp_path / "run")
    assert not ray.is_initialized(), "the check must run before Ray starts"


def test_a_non_finite_loss_stops_before_the_optimizer_step():
    from types import SimpleNamespace

    from sgvla.train.config import config_from_dict
    from sgvla.train.loop import NonFiniteLoss, train_step

    class NanLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            loss = (self.w * x).sum()
            return SimpleNamespace(loss=loss, losses={"action": loss}, token_accuracy=None)

    model = NanLoss()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    cfg = config_from_dict({})
    train_step(model, [{"x": torch.ones(3)}], opt, ["action"], cfg, torch.device("cpu"))
    before = model.w.detach().clone()
    with pytest.raises(NonFiniteLoss, match="loss=nan"):
        train_step(model, [{"x": torch.tensor([1.0, float("nan"), 1.0])}], opt, ["action"], cfg, torch.device("cpu"))
    assert torch.equal(model.w.detach(), before), "a NaN step must not reach the weights"


# -- 14: damaged or foreign demo files are refused in the driver ------------------------------------
@pytest.mark.parametrize("damage, words", [("dim", r"not \(T, 13\)"), ("nan", "holds NaN or inf")])
def test_bad_demo_actions_are_one_error_before_ray(tmp_path, damage, words):
    import json

    import h5py
    import numpy as np
    import ray

    from sgvla.datagen.pipeline import run_gen
    from tests.test_gen_inputs import write_mshab_file

    h5_path = write_mshab_file(tmp_path / "demos" / "pick" / "obj.h5", n_eps=2, subtask="pick")
    with h5py.File(h5_path, "r+") as h5:
        acts = h5["traj_1/actions"][()]
        del h5["traj_1/actions"]
        if damage == "dim":
            h5["traj_1/actions"] = acts[:, :11]
        else:
            acts[3, 2] = np.nan
            h5["traj_1/actions"] = acts
    doc = json.loads(h5_path.with_suffix(".json").read_text())
    doc["env_info"]["env_id"] = "MiniKitchenPick-v0"
    h5_path.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(SgvlaError, match=words):
        run_gen(task="mini_kitchen", subtask="pick", episodes=0, out=tmp_path / "ds", demos=tmp_path / "demos",
                split="train", workers=1, ray_address=None, episodes_per_shard=1, overwrite=False)
    assert not ray.is_initialized()


# -- 14: the PlacementGroupCleaner flood -----------------------------------------------------------
def test_ray_train_state_api_warnings_are_quieted_in_workers():
    import logging

    import ray

    from sgvla.train.launch import QUIET_LOGGERS, _start_ray

    session = _start_ray(None, 1, 1.0, 0)
    try:
        level = ray.get(ray.remote(lambda: logging.getLogger(QUIET_LOGGERS[0]).getEffectiveLevel()).remote())
    finally:
        session.close()
    assert level >= logging.ERROR


# -- 15: a ManiSkill trajectory of another env ----------------------------------------------------
def test_state_obs_trajectory_of_another_env_is_one_error(tmp_path):
    """A RecordEpisode file of PickCube-v1 with obs_mode="state" (its `obs` is a dataset, not a group)."""
    import json

    import h5py
    import numpy as np

    from sgvla.datagen.pipeline import run_gen

    demos = tmp_path / "demos"
    demos.mkdir()
    with h5py.File(demos / "pick.h5", "w") as h5:
        h5["traj_0/obs"] = np.zeros((6, 42), np.float32)
        h5["traj_0/actions"] = np.zeros((5, 8), np.float32)
    (demos / "pick.json").write_text(json.dumps({
        "env_info": {"env_id": "PickCube-v1", "env_kwargs": {"obs_mode": "state"}, "max_episode_steps": 50},
        "episodes": [{"episode_id": 0, "episode_seed": 0, "elapsed_steps": 5, "reset_kwargs": {"seed": 0}}]}))
    with pytest.raises(SgvlaError, match="recorded in env PickCube-v1"):
        run_gen(task="mini_kitchen", subtask="pick", episodes=0, out=tmp_path / "ds", demos=demos, split="train",
                workers=1, ray_address=None, episodes_per_shard=2, overwrite=False)


# -- 11: a tampered config.json -------------------------------------------------------------------
def _saved_tiny_model(tmp_path: Path) -> Path:
    """A random tiny checkpoint (head RGB only, tokens only) written by save_pretrained."""
    from sgvla.model import SGVLAConfig, SGVLAForActionPrediction

    stats = {k: [0.0] * 13 for k in ("mean", "std")}
    stats.update(min=[-1.0] * 13, max=[1.0] * 13, q01=[-1.0] * 13, q99=[1.0] * 13)
    cfg = SGVLAConfig.from_preset("tiny", views=["head_rgb"], aux_decoders=[], use_flow_expert=False,
                                  action_stats=stats)
    path = tmp_path / "model"
    SGVLAForActionPrediction(cfg).save_pretrained(path)
    return path


def test_tampered_action_decoding_in_config_is_refused(tmp_path):
    import json

    from sgvla.eval.runner import run_eval
    from sgvla.model import load_model

    path = _saved_tiny_model(tmp_path)
    load_model(path)  # as saved: fine
    doc = json.loads((path / "config.json").read_text())
    doc["n_action_bins"] = 64
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(SgvlaError, match="disagrees with the weights on n_action_bins"):
        load_model(path)
    with pytest.raises(SgvlaError, match="disagrees with the weights on n_action_bins"):
        run_eval(str(path), "mini_kitchen", "pick", episodes=1, out=tmp_path / "eval")


# -- 7: broken checkpoints are refused by the eval driver -----------------------------------------
@pytest.mark.parametrize("damage, words", [
    ("truncate", "not a readable safetensors file"),
    ("pickle", "has no model.safetensors \\(it has pytorch_model.bin"),
    ("shape", "does not match its config.json"),
    ("nan", "has NaN/inf weights"),
    ("config", "config.json is not valid JSON"),
])
def test_broken_checkpoint_is_one_error_before_any_rollout(tmp_path, damage, words):
    import json

    import ray

    from sgvla.eval.runner import run_eval

    path = _saved_tiny_model(tmp_path)
    weights = path / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "pickle":
        weights.rename(path / "pytorch_model.bin")
    elif damage == "nan":
        from safetensors.torch import load_file, save_file

        state = load_file(weights)
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name][0] = float("nan")
        save_file(state, weights, metadata={"format": "pt"})
    elif damage == "config":
        (path / "config.json").write_text('{"model_type": "sgvla", "views": [')
    else:
        doc = json.loads((path / "config.json").read_text())
        doc["text_config"]["intermediate_size"] *= 2
        (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(SgvlaError, match=words):
        run_eval(str(path), "mini_kitchen", "pick", episodes=1, out=tmp_path / "eval")
    assert not ray.is_initialized(), "refused in the driver, before any worker"


# -- 10: damaged run files are one error line -------------------------------------------------------
def test_damaged_run_json_and_trainer_state_are_one_error(tmp_path):
    from sgvla.train.checkpoint import read_state
    from sgvla.train.config import load_config
    from sgvla.train.preflight import check_output

    ckpt = _checkpoint(tmp_path / "run" / "checkpoints")
    (ckpt / "trainer_state.json").write_text('{"stage": "sta')
    with pytest.raises(SgvlaError, match="trainer_state.json is not valid JSON.*delete the checkpoint folder"):
        read_state(ckpt)
    (tmp_path / "run" / "run.json").write_bytes(b"\x00\xff garbage")
    with pytest.raises(SgvlaError, match="run.json is not valid JSON.*re-run with --resume"):
        check_output(tmp_path / "run", True, load_config(TINY), "data")


# -- 10: paths a user can fix are one error line ----------------------------------------------------
def test_unusable_paths_and_binary_config_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from sgvla.cli import app

    afile = tmp_path / "afile"
    afile.write_text("")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    runner = CliRunner()
    cases = [
        (["eval", "--model", "expert", "--episodes", "1", "--out", str(afile / "x")], "--out"),
        (["train", "--config", str(binary), "--dataset", str(tmp_path), "--output", str(tmp_path / "r")],
         "not a text file"),
        (["gen", "--task", "mini_kitchen", "--subtask", "pick", "--out", str(afile / "ds"), "--workers", "1"],
         "cannot use"),
    ]
    cases += [
        (["info", str(afile)], "is a file, not a dataset folder"),
        (["train", "--config", str(tmp_path), "--dataset", str(tmp_path), "--output", str(tmp_path / "r")],
         "is a folder: give a YAML file"),
    ]
    for args, words in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, (args, res.output)


def test_disk_full_is_one_line_saying_what_is_kept(monkeypatch):
    import errno

    from typer.testing import CliRunner

    from sgvla.cli import app
    from sgvla.dataset import info

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(info, "print_info", full)
    res = CliRunner().invoke(app, ["info", "x"])
    assert res.exit_code == 2 and "error: the disk is full writing x" in res.output, res.output


# -- 8: Ctrl-C and SIGTERM -------------------------------------------------------------------------
def _signal_when(args: list[str], cwd: Path, ready: str, sig: int) -> tuple[int, str]:
    """Run `sgvla ARGS`, send `sig` once `ready` shows in its output, return (status, output)."""
    import signal
    import subprocess
    import sys
    import time

    log = cwd / "out.log"
    with open(log, "w") as f:
        # The child gets SIGINT's default disposition, as a terminal's foreground job has: started from a
        # background job of a non-interactive shell (`bash .ci/run &`), it would inherit SIGINT ignored,
        # and Python then never turns Ctrl-C into KeyboardInterrupt.
        proc = subprocess.Popen([sys.executable, "-m", "sgvla.cli", *args], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        end = time.time() + 300
        while ready not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.time() < end, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return rc, log.read_text(errors="replace")


def test_ctrl_c_in_train_and_sigterm_in_gen_say_how_to_continue(tmp_path):
    import signal

    from sgvla.dataset.synthetic import write_synthetic_dataset

    rc, out = _signal_when(["gen", "--task", "mini_kitchen", "--subtask", "pick", "--episodes", "1", "--out", "ds",
                            "--workers", "1"], tmp_path, "sgvla gen:", signal.SIGTERM)
    assert rc == 130 and "interrupted; re-run the same command to resume" in out, out[-3000:]
    assert "Traceback" not in out and "SIGTERM" not in out, out[-3000:]

    data = write_synthetic_dataset(tmp_path / "data", episodes={"train": [30, 30]})
    cfg = tmp_path / "long.yaml"
    # stages 2 and 3 long: on a slow machine the progress lines reach the log late, and a run that
    # has finished by then exits 0 instead of being interrupted
    cfg.write_text(f"base: {TINY}\n" + "".join(f"stage{i}:\n  epochs: 100\n  max_steps: 5000\n" for i in (2, 3)))
    rc, out = _signal_when(["train", "--config", str(cfg), "--dataset", str(data), "--output", "run"],
                           tmp_path, "stage2 loss", signal.SIGINT)
    assert rc == 130, out[-3000:]
    assert f"interrupted; continue with `sgvla train ... --resume --output {tmp_path / 'run'}`" in out
    assert "has already been shutdown" not in out, out[-3000:]  # nothing woke on Ray after its shutdown


# -- 9: a deleted shard ------------------------------------------------------------------------------
def test_deleted_shard_is_found_before_training(tmp_path):
    import ray

    from sgvla.dataset.synthetic import write_synthetic_dataset
    from sgvla.train.launch import run_train

    data = write_synthetic_dataset(tmp_path / "data", episodes={"train": [4, 4, 4]}, episodes_per_shard=1)
    sorted(data.glob("*/data/train-*.parquet"))[1].unlink()
    with pytest.raises(SgvlaError, match=r"train shards \[1\] of 3 are missing.*sgvla validate"):
        run_train(TINY, str(data), tmp_path / "run")
    assert not ray.is_initialized()


def test_info_warns_about_a_missing_shard_or_wrong_schema(tmp_path, capsys):
    import pyarrow.parquet as pq

    from sgvla.dataset.info import print_info
    from sgvla.dataset.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", episodes={"train": [4, 4, 4]}, episodes_per_shard=1)
    shards = sorted(data.glob("*/data/train-*.parquet"))
    shards[1].unlink()
    t = pq.read_table(shards[2])
    pq.write_table(t.drop_columns(["reward"]).replace_schema_metadata(None), shards[2])
    print_info(data)
    err = capsys.readouterr().err
    assert "warning:" in err and "train shards [1] of 3 are missing" in err, err
    assert "columns differ from the schema (missing ['reward']" in err, err


# -- 4: bounded waits --------------------------------------------------------------------------------
@pytest.fixture
def silent_endpoint():
    """A TCP port that accepts connections and never answers (what hung Ray and the Hub clients)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held, stop = [], threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_unanswered_cluster_and_hub_are_bounded_waits(tmp_path, silent_endpoint):
    import subprocess
    import sys
    import time

    from sgvla.dataset.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", episodes={"train": [4, 4]})
    env = dict(os.environ, SGVLA_REACH_TIMEOUT="3", HF_ENDPOINT=f"http://{silent_endpoint}", HF_TOKEN="hf_x")
    env.pop("HF_HUB_OFFLINE", None)
    cases = [
        (["eval", "--model", "expert", "--subtask", "pick", "--episodes", "1", "--ray-address", silent_endpoint,
          "--out", str(tmp_path / "ev")], "the Ray cluster at --ray-address"),
        (["push-dataset", str(data), "--repo-id", "someone/data"], "the Hugging Face Hub"),
        (["train", "--config", str(TINY), "--dataset", "someone/data", "--output", str(tmp_path / "run")],
         "the Hugging Face Hub"),
    ]
    for args, words in cases:
        t0 = time.time()
        res = subprocess.run([sys.executable, "-m", "sgvla.cli", *args], env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 2, (args, res.stderr[-2000:])
        assert f"error: cannot reach {words}" in res.stderr, res.stderr[-2000:]
        assert time.time() - t0 < 60, args


# -- 5: a truncated shard --------------------------------------------------------------------------
def test_truncated_shard_is_one_error_line_for_readers(tmp_path):
    from typer.testing import CliRunner

    from sgvla.cli import app
    from sgvla.dataset.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", episodes={"train": [4, 4]}, episodes_per_shard=1)
    shard = sorted(data.glob("*/data/train-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    runner = CliRunner()
    for args in (["info", str(data)], ["viz", str(data), "--episode", "0", "--out", str(tmp_path / "v.mp4")],
                 ["train", "--config", str(TINY), "--dataset", str(data), "--output", str(tmp_path / "run")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert f"{shard} is not a readable Parquet file" in res.output and "Traceback" not in res.output, res.output
        assert "re-run the `sgvla gen` command" in res.output


# -- 13: two writers of one dataset folder ------------------------------------------------------------
def test_second_gen_on_the_same_folder_fails_fast_naming_the_holder(tmp_path):
    from sgvla.datagen.pipeline import run_gen
    from sgvla.dataset.atomic import folder_lock

    args = dict(task="mini_kitchen", subtask="pick", episodes=1, out=tmp_path / "ds", demos=None, split="train",
                workers=1, ray_address=None, episodes_per_shard=1, overwrite=False)
    with folder_lock(tmp_path / "ds", "`sgvla gen`"):  # what a first, still running gen holds
        with pytest.raises(SgvlaError, match=f"being written by another `sgvla gen` \\(PID {os.getpid()}\\)"):
            run_gen(**args)
    with folder_lock(tmp_path / "ds", "`sgvla gen`"):  # released: the folder can be taken again
        pass
    assert not (tmp_path / "ds").exists(), "the refused run must not have touched the folder"


# -- 12: temp folders of a killed writer ------------------------------------------------------------
def test_stale_temp_folders_are_removed_on_start_and_resume(tmp_path):
    from sgvla.train.launch import clean_stale_temp

    run = tmp_path / "run"
    keep = [run / "stages" / "stage1", run / "snapshots" / "step-00000010", run / "model"]
    stale = [run / "stages" / ".stage1.tmp-1a2b3c4d", run / "snapshots" / ".step-00000020.old-5e6f7a8b",
             run / ".model.tmp-0badf00d", run / "checkpoints" / ".tmp-checkpoint_000003-4242"]
    for p in keep + stale:
        p.mkdir(parents=True)
        (p / "model.safetensors").write_bytes(b"x")
    assert sorted(clean_stale_temp(run)) == sorted(stale)
    assert all(p.is_dir() for p in keep) and not any(p.exists() for p in stale)


# -- 12: Ray processes a kill -9 leaves behind ---------------------------------------------------------
def test_ray_agents_orphaned_by_kill_9_are_ended_by_the_next_command(tmp_path):
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from sgvla.raysession import reap_orphaned_instances

    code = ("from sgvla.raysession import RaySession; import os, time, psutil; RaySession(num_cpus=1).start(); "
            "print(' '.join(str(c.pid) for c in psutil.Process().children(recursive=True)), flush=True); "
            "time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    pids: list[int] = []
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids, "Ray started no processes?"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(3)
        left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert left, "nothing outlived the driver: this case no longer needs reaping"
        ended = reap_orphaned_instances()
        assert set(left) <= set(ended), (left, ended)
        time.sleep(1)
        assert not [p for p in left if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    finally:
        proc.kill()
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


# -- 14: notices -------------------------------------------------------------------------------------
def test_more_episodes_asked_than_the_demos_hold_is_said(tmp_path, capsys):
    from sgvla.datagen.plan import build_plan
    from sgvla.datagen.sources import DemoEpisode, DemoFile

    eps = tuple(DemoEpisode(f"traj_{i}", i, 5, {"seed": i}, {}, True) for i in range(2))
    files = {"pick": [DemoFile(tmp_path / "pick.h5", "MiniKitchenPick-v0", {}, 200, "pick", "actions", eps)]}
    plan = build_plan("tidy_house", "train", files, episodes=50, episodes_per_shard=8)
    assert sum(len(s.episodes) for s in plan) == 2
    assert "--episodes 50 but the demos hold 2 episode(s) of pick: recording 2" in capsys.readouterr().err
