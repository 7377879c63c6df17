"""`sgvla train` end to end on Ray Train with 2 CPU workers (tiny preset, small synthetic dataset).

One uninterrupted run serves several tests (stages, falling loss, export, W&B); a second run of the same
config is killed twice -- first one Ray Train worker (Ray restarts the group from the newest
checkpoint), then the whole driver (continued with --resume) -- and must log the same losses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sgvla.dataset.synthetic import write_synthetic_dataset
from sgvla.train.launch import run_train
from sgvla.train.metrics import read_metrics
from sgvla.train.preflight import run_id

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# 64 rows, 8 per optimizer step: 8 steps per epoch -> stage1 8, stage2 16, stage3 8 steps.
OVERRIDES = ["train.global_batch_size=8", "train.micro_batch_size=4", "train.checkpoint_every=4",
             "stage1.max_steps=null", "stage2.max_steps=null", "stage3.max_steps=null",
             "stage1.epochs=1", "stage2.epochs=2", "stage3.epochs=1"]
TOTAL_STEPS = 32
COMPARED = ("loss", "loss_action", "loss_grasp", "loss_qpos", "loss_mask", "loss_global_pos", "loss_obj_pose",
            "loss_flow", "token_accuracy", "grad_norm")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("train_ray") / "data",
                                   episodes={"train": [8] * 8}, episodes_per_shard=2)


# run_a and run_b also mirror their metrics to an offline W&B run (W&B changes no number).
WANDB = ["train.wandb=sgvla-test", "train.wandb_mode=offline"]


@pytest.fixture(scope="module")
def run_a(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_a") / "run"
    summary = run_train(TINY, str(dataset), out, workers=2, overrides=OVERRIDES + WANDB)
    assert summary["steps"] == TOTAL_STEPS
    return out


def test_all_three_stages_run_on_two_workers_and_the_loss_falls(run_a):
    records = read_metrics(run_a)
    assert [r["global_step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
    assert [r["stage"] for r in records] == ["stage1"] * 8 + ["stage2"] * 16 + ["stage3"] * 8
    for r in records:
        assert np.isfinite(r["loss"]) and r["lr"] == pytest.approx(1e-3) and r["samples_per_s"] > 0
    s1 = [r for r in records if r["stage"] == "stage1"]
    assert {"loss_action", "loss_grasp", "loss_qpos", "loss_mask", "token_accuracy"} <= set(s1[0])
    s12 = [r["loss_action"] for r in records if r["stage"] != "stage3"]
    assert np.mean(s12[-4:]) < np.mean(s12[:4]) - 0.3, s12
    flow = [r["loss_flow"] for r in records if r["stage"] == "stage3"]
    assert set(records[-1]) >= {"loss_flow"} and "loss_action" not in records[-1]
    # 8 flow-matching steps with per-rank noise need not lower the loss; that stage 3 trains exactly
    # the expert is `test_stage3_changed_only_the_expert`
    assert all(np.isfinite(flow)), flow
    assert sorted(p.name for p in (run_a / "stages").iterdir()) == ["stage1", "stage2", "stage3"]
    kept = sorted(p.name for p in (run_a / "checkpoints").glob("step-*"))
    assert kept == ["step-00000028", "step-00000032"]  # Ray Train pruned the older ones
    assert any((run_a / "tb").iterdir())


def test_stage3_changed_only_the_expert(run_a):
    before = load_file(run_a / "stages" / "stage2" / "model.safetensors")
    after = load_file(run_a / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith("expert.") for k in changed), changed[:5]
    s1 = load_file(run_a / "stages" / "stage1" / "model.safetensors")
    assert any(not torch.equal(s1[k], before[k]) for k in before if k.startswith("llm."))


def test_exported_model_loads_and_predicts(run_a, dataset):
    from sgvla.dataset.schema import decode_png
    from sgvla.model import load_policy

    model, processor = load_policy(run_a / "model")
    model.eval()
    assert (run_a / "model" / "processor_config.json").is_file()
    stats = json.loads((dataset / "meta" / "stats.json").read_text())["action"]
    assert model.config.action_stats["q01"] == pytest.approx(stats["q01"])
    assert model.config.aux_detach == []
    import pyarrow.parquet as pq

    row = pq.read_table(sorted(dataset.glob("*/data/train-*.parquet"))[0]).slice(0, 1).to_pylist()[0]
    obs = {v: decode_png(row[v]) for v in model.config.views}
    for mode in ("tokens", "flow"):
        pred = model.predict_action(obs, row["instruction"], mode=mode, processor=processor)
        assert pred.action.shape == (13,) and np.all(np.isfinite(pred.chunk))
        lo, hi = np.array(stats["q01"]), np.array(stats["q99"])
        assert np.all(pred.action >= lo - 1e-4) and np.all(pred.action <= hi + 1e-4)


def test_plot_command_draws_the_run(run_a, tmp_path):
    cmd = [sys.executable, "-m", "sgvla.cli", "plot", str(run_a), "--out", str(tmp_path / "p.png")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "p.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------- kill and resume


def _session_procs(sid: int) -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command)} of every process in session `sid` (all that the run started)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,sid=,args="], capture_output=True, text=True).stdout
    procs = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and int(parts[2]) == sid:
            procs[int(parts[0])] = (int(parts[1]), parts[3] if len(parts) > 3 else "")
    return procs


def _train_workers(sid: int) -> list[int]:
    """Ray Train worker actors (not their DataLoader processes, which inherit the process title)."""
    procs = _session_procs(sid)
    return [pid for pid, (ppid, args) in procs.items() if args.startswith("ray::RayTrainWorker")
            and not procs.get(ppid, (0, ""))[1].startswith("ray::RayTrainWorker")]


def _wait(cond, proc, what: str, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def _max_step(run: Path) -> int:
    return max((r["global_step"] for r in read_metrics(run)), default=0)


def test_killed_and_resumed_run_logs_the_same_losses(run_a, dataset, tmp_path):
    out = tmp_path / "run_b"
    cmd = [sys.executable, "-m", "sgvla.cli", "train", "--config", str(TINY), "--dataset", str(dataset),
           "--output", str(out), "--workers", "2"] + [a for o in OVERRIDES + WANDB for a in ("--set", o)]
    log = open(tmp_path / "run_b.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # 1) kill one training worker after the first checkpoint: Ray Train restarts the group
        _wait(lambda: (out / "checkpoints" / "step-00000004").is_dir() and _max_step(out) >= 6, proc,
              "step 6")
        workers = _train_workers(proc.pid)
        assert len(workers) == 2, _session_procs(proc.pid)
        os.kill(workers[-1], signal.SIGKILL)
        # 2) once the restarted group has checkpointed again, kill the driver and all it started
        _wait(lambda: (out / "checkpoints" / "step-00000016").is_dir() and _max_step(out) >= 18, proc,
              "step 18 after the restart")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in _session_procs(proc.pid):
            os.kill(pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "run_b.log").read_text()
    assert "RETRY" in text or "restart" in text
    assert 18 <= _max_step(out) < TOTAL_STEPS
    rid = run_id(out)
    summary = run_train(TINY, str(dataset), out, workers=2, resume=True, overrides=OVERRIDES + WANDB)
    assert summary["steps"] == TOTAL_STEPS
    # the restarted worker group and the resumed driver continued the same W&B run
    assert run_id(out) == rid
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) >= 3 and all(p.name.endswith(f"-{rid}") for p in runs), runs
    a, b = read_metrics(run_a), read_metrics(out)
    assert [r["global_step"] for r in b] == list(range(1, TOTAL_STEPS + 1))
    for ra, rb in zip(a, b, strict=True):
        for k in COMPARED:
            assert (k in ra) == (k in rb), (ra["global_step"], k)
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (ra["global_step"], k, ra[k], rb[k])
    fa = load_file(run_a / "model" / "model.safetensors")
    fb = load_file(out / "model" / "model.safetensors")
    assert all(torch.allclose(fa[k], fb[k], rtol=1e-5, atol=1e-6) for k in fa)


def test_fsdp_trains_the_same_model_as_ddp(run_a, dataset, tmp_path):
    out = tmp_path / "fsdp"
    short = ["stage1.max_steps=3", "stage2.max_steps=1", "stage3.max_steps=2"]
    run_train(TINY, str(dataset), out, workers=2, overrides=OVERRIDES + short + ["train.strategy=fsdp"])
    a, f = read_metrics(run_a), read_metrics(out)
    assert [r["stage"] for r in f] == ["stage1"] * 3 + ["stage2"] + ["stage3"] * 2
    for ra, rf in zip(a[:3], f[:3], strict=True):  # same init, data and math: sharding changes nothing
        for k in COMPARED:
            if k in ra:
                assert rf[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (ra["global_step"], k)
    before = load_file(out / "stages" / "stage2" / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith("expert.") for k in changed)


def _wandb_history(path: Path) -> list[dict]:
    """The history records of an offline W&B run file (`run-ID.wandb`): a LevelDB-style log (32 KiB
    blocks of records with a 7-byte header: CRC, length, kind) after a 7-byte file header, each
    record a `wandb_internal_pb2.Record` protobuf."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, pieces, out = 7, 32 * 1024, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7]) if left >= 7 else (0, 0)
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(pieces)
            pieces = b""
            if rec.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return out


def test_wandb_mirrors_the_metrics(run_a):
    """run_a's offline W&B run holds its metrics step for step (the kill/resume test checks that
    restarts and --resume continue the same W&B run)."""
    rid = run_id(run_a)
    files = list((run_a / "wandb").glob(f"offline-run-*-{rid}/run-{rid}.wandb"))
    assert len(files) == 1, list((run_a / "wandb").rglob("*"))
    history = _wandb_history(files[0])
    records = read_metrics(run_a)
    assert [h["_step"] for h in history] == [r["global_step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
    for h, r in zip(history, records, strict=True):
        assert h["train/loss"] == pytest.approx(r["loss"]) and h["train/lr"] == pytest.approx(r["lr"])
