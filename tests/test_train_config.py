"""Training configuration, presets, sampler, checkpoints, metrics and plot (no model, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sgvla.dataset.sampler import ResumableDistributedSampler
from sgvla.errors import SgvlaError
from sgvla.train.checkpoint import (
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    rng_state,
    write_checkpoint,
)
from sgvla.train.config import batch_plan, config_from_dict, load_config
from sgvla.train.metrics import MetricsLogger, read_metrics
from sgvla.train.plot import plot_run
from sgvla.train.stages import plan_stages, stage_lr

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("_"))


def test_yaml_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 2e-5\ntrain:\n  seed: 3\nstage1:\n  epochs: 2\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  micro_batch_size: 4\n")
    cfg = load_config(tmp_path / "child.yaml", ["stage2.epochs=5", "model.views=[head_rgb, hand_rgb]"])
    assert cfg.optim.lr == pytest.approx(2e-5)  # YAML reads `2e-5` as a string: still a float here
    assert (cfg.train.seed, cfg.train.micro_batch_size) == (3, 4)
    assert (cfg.stage1.epochs, cfg.stage2.epochs) == (2, 5)
    assert cfg.model.views == ["head_rgb", "hand_rgb"]


@pytest.mark.parametrize("bad, words", [
    ({"train": {"sede": 1}}, ["train.sede", "seed"]),
    ({"optimizer": {}}, ["optimizer", "optim"]),
    ({"stage1": {"epochs": "three"}}, ["stage1.epochs", "integer"]),
    ({"train": {"schedule": "random"}}, ["train.schedule"]),
    ({"train": {"schedule": "naive"}}, ["naive", "stage1.epochs=0"]),
    # checked in the config, so a Hub dataset cannot train on zero rows because of a typo
    ({"data": {"subtasks": ["pik"]}}, ["data.subtasks", "pik", "pick"]),
    ({"data": {"subtasks": []}}, ["data.subtasks", "empty"]),
    ({"optim": {"lr_schedule": "linear"}}, ["optim.lr_schedule", "cosine"]),
    ({"optim": {"min_lr_ratio": 2}}, ["min_lr_ratio"]),
    ({"train": {"wandb_mode": "cloud"}}, ["train.wandb_mode", "offline"]),
    ({"data": {"action_normalization": "minmax"}}, ["data.action_normalization", "q99", "none"]),
])
def test_bad_config_values_are_named(bad, words):
    with pytest.raises(SgvlaError) as e:
        config_from_dict(bad)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_cosine_lr_warms_up_then_decays_to_its_floor_within_each_stage():
    cfg = config_from_dict({"optim": {"lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 10,
                                      "min_lr_ratio": 0.1}})
    lrs = [stage_lr(cfg.optim, step, 110) for step in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:-1], lrs[10:], strict=True))  # never rises after the warm-up
    assert lrs[-1] == pytest.approx(1e-4) and lrs[59] == pytest.approx(5.5e-4, rel=0.02)
    assert stage_lr(config_from_dict({}).optim, 50, 110) == config_from_dict({}).optim.lr  # paper: constant


def test_a_preset_replaces_its_base_fields_whole(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  aux_weights: {grasp: 5.0, qpos: 2.0}\n  history: 1\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel:\n  aux_weights: {grasp: 3.0}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.model.aux_weights == {"grasp": 3.0} and cfg.model.history == 1


def test_fingerprint_is_the_hash_of_the_compat_view():
    cfg = config_from_dict({})
    view = cfg.compat_view()
    assert set(view) == {"model", "data", "train"} and "epochs" not in json.dumps(view)
    longer = config_from_dict({"stage2": {"epochs": 9}, "train": {"checkpoint_every": 7}})
    assert longer.compat_fingerprint() == cfg.compat_fingerprint()
    other = config_from_dict({"train": {"seed": 1}})
    assert other.compat_view() != view and other.compat_fingerprint() != cfg.compat_fingerprint()


def test_bad_override_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("stage1:\n  epochs: 1\n")
    with pytest.raises(SgvlaError, match="did you mean 'epochs'"):
        load_config(tmp_path / "c.yaml", ["stage1.epoch=3"])
    with pytest.raises(SgvlaError, match="section.key=value"):
        load_config(tmp_path / "c.yaml", ["stage1.epochs"])


def test_gradient_accumulation_reaches_the_global_batch():
    cfg = config_from_dict({"train": {"global_batch_size": 512, "micro_batch_size": 32}})
    assert batch_plan(cfg, 8) == 2 and batch_plan(cfg, 16) == 1
    with pytest.raises(SgvlaError, match="not a multiple"):
        batch_plan(cfg, 3)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_builds_its_model_config(path):
    from sgvla.train.modelops import model_config

    cfg = load_config(path)
    mc = model_config(cfg)
    stages = plan_stages(cfg, bool(mc.use_flow_expert))
    assert stages, path
    if not path.stem.startswith(("tiny", "cpu_", "study_", "diag_")):  # the paper's optimisation settings (section 6.1)
        assert cfg.optim.lr == pytest.approx(2e-5) and cfg.train.global_batch_size == 512
        assert mc.aux_weights["grasp"] == 5.0 and mc.aux_weights["qpos"] == 1.0


def test_paper_schedules_in_the_presets():
    def epochs(name):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        return [(s.name, s.epochs) for s in plan_stages(cfg, True)]

    assert epochs("table3_progressive_all") == [("stage1", 3), ("stage2", 7)]
    assert epochs("table3_naive_all") == [("stage2", 10)]
    assert epochs("table4_seg_obj_pos") == [("stage1", 2), ("stage2", 4)]
    assert epochs("tiny") == [("stage1", 1), ("stage2", 2), ("stage3", 1)]
    cfg = load_config(CONFIGS / "table2_multiview_depth.yaml")
    with pytest.raises(SgvlaError, match="use_flow_expert"):
        plan_stages(config_from_dict({**cfg.to_dict(), "stage3": {"epochs": 1}}), False)


def test_sampler_resumes_mid_epoch_and_splits_like_the_global_order():
    n, world, micro_steps = 37, 2, 5
    full = [ResumableDistributedSampler(n, world, r, seed=7) for r in range(world)]
    for s in full:
        s.set_epoch(2, stage=1)
    orders = [list(s) for s in full]
    assert len(orders[0]) == len(orders[1]) == n // world
    assert not set(orders[0]) & set(orders[1])
    resumed = ResumableDistributedSampler(n, world, 1, seed=7)
    resumed.set_epoch(2, stage=1, start=micro_steps)
    assert list(resumed) == orders[1][micro_steps:] and len(resumed) == n // world - micro_steps
    other = ResumableDistributedSampler(n, world, 1, seed=7)
    other.set_epoch(3, stage=1)
    assert list(other) != orders[1]


def test_checkpoint_round_trip_with_tied_weights(tmp_path):
    emb = torch.randn(5, 3)
    state = {"a.weight": emb, "b.weight": emb, "c": torch.arange(4.0)}
    opt = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    st = TrainerState(stage=1, stage_name="stage2", epoch=2, step_in_epoch=4, global_step=17, fingerprint="x")
    path = write_checkpoint(tmp_path, st, state, opt, [rng_state()])
    (tmp_path / ".tmp-step-00000099-1").mkdir()  # a half-written one from a killed run
    assert latest_checkpoint(tmp_path) == path and list_checkpoints(tmp_path) == [path]
    st2, model, opt2, rngs = read_checkpoint(path)
    assert st2 == st
    assert torch.equal(model["b.weight"], emb) and model["a.weight"] is model["b.weight"]
    assert opt2["param_groups"][0]["lr"] == 0.1 and len(rngs) == 1


def test_metrics_truncate_on_resume_and_plot(tmp_path):
    log = MetricsLogger(tmp_path, start_step=0)
    for step in range(1, 7):
        stage = "stage1" if step <= 3 else "stage2"
        log.log({"global_step": step, "stage": stage, "loss": 10.0 / step, "loss_action": 5.0 / step,
                 "loss_grasp": 1.0 / step, "token_accuracy": 0.1 * step, "grad_norm": 1.0})
    log.close()
    MetricsLogger(tmp_path, start_step=4).close()  # a run resumed from the checkpoint at step 4
    assert [r["global_step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    png = plot_run(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(SgvlaError, match="no records"):
        plot_run(tmp_path / "empty")
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 10.0


def test_wandb_without_the_package_is_named_before_training(monkeypatch):
    import importlib.util

    from sgvla.train.preflight import check_tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    check_tracking(config_from_dict({}))  # off by default: nothing needed
    with pytest.raises(SgvlaError, match=r"train.wandb='p' but the wandb package is not installed.*pip install"):
        check_tracking(config_from_dict({"train": {"wandb": "p"}}))


@pytest.mark.parametrize(("cpus", "omp", "threads"), [(2, None, 2), (2, "1", 1), (1, "4", 1), (0.5, None, 1),
                                                      (2, "", 2), (2, "x", 2)])
def test_cpu_worker_threads_follow_its_share_capped_by_omp(monkeypatch, cpus, omp, threads):
    from sgvla.train.loop import cpu_threads

    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert cpu_threads(cpus) == threads
