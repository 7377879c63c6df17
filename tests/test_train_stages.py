"""Stage semantics on the tiny model (one process, no Ray) and the driver's checks before Ray starts."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sgvla import provenance
from sgvla.dataset.synthetic import write_synthetic_dataset
from sgvla.errors import SgvlaError
from sgvla.train import modelops
from sgvla.train.config import config_from_dict
from sgvla.train.launch import run_train
from sgvla.train.loop import train_step
from sgvla.train.preflight import check_output, inspect_dataset, write_run_file
from sgvla.train.stages import plan_stages

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
BACKBONE = ("vision.", "projector.", "llm.")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("train_stages") / "data",
                                   episodes={"train": [6, 6]}, episodes_per_shard=1)


@pytest.fixture(scope="module")
def setup(dataset):
    """A tiny model, its batch of 4 samples and the run's stages."""
    cfg = config_from_dict({"model": {"preset": "tiny"}, "optim": {"lr": 1e-3},
                            "train": {"global_batch_size": 4, "micro_batch_size": 4},
                            "stage1": {"epochs": 1}, "stage2": {"epochs": 1}, "stage3": {"epochs": 1}})
    info = dataclasses.asdict(inspect_dataset(str(dataset), cfg, modelops.model_config(cfg)))
    torch.manual_seed(0)
    model, processor = modelops.build_model(cfg, info["stats"])
    ds, idx = modelops.build_dataset(cfg, info, model.config)
    batch = processor.collate([ds[i] for i in (0, 3, 7, 10)])
    stages = {s.name: s for s in plan_stages(cfg, True)}
    return cfg, model, batch, stages


def test_the_documented_dataloader_feeds_the_model(dataset, setup):
    """README: the dataset + make_dataloader with the processor's collate, as `sgvla train` uses them,
    gives batches `model(**batch)` trains on; the trainer's own loader is this one."""
    from sgvla.dataset.torch_dataset import SgvlaTorchDataset, make_dataloader
    from sgvla.model import SGVLAProcessor
    from sgvla.train.loop import Worker

    cfg, model, _, _ = setup
    c = model.config
    ds = SgvlaTorchDataset(dataset, "mini_kitchen", views=c.views, history=c.history,
                           chunk_size=c.chunk_size)
    processor = SGVLAProcessor.from_config(c)
    loader = make_dataloader(ds, batch_size=4, num_workers=0, seed=0, collate_fn=processor.collate)
    out = model(**next(iter(loader)))
    assert torch.isfinite(out.loss) and {"input_ids", "labels"} <= set(next(iter(loader)))
    assert "make_dataloader(" in inspect.getsource(Worker._loader)


def _step(model, stage, batch, cfg, **forward):
    m = copy.deepcopy(model)
    modelops.apply_stage(m, stage)
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam(m.parameters(), lr=cfg.optim.lr)
    out = train_step(m, [batch], opt, modelops.stage_losses(m), cfg, torch.device("cpu"), forward)
    return before, m.state_dict(), out


def _changed(before, after, prefixes) -> set[str]:
    return {k for k in before if k.startswith(prefixes) and not torch.equal(before[k], after[k])}


def test_stage1_backbone_update_equals_the_action_loss_update(setup):
    cfg, model, batch, stages = setup
    before, full, out = _step(model, stages["stage1"], batch, cfg)
    _, action_only, _ = _step(model, stages["stage1"], batch, cfg, compute=("action",))
    assert {"loss_action", "loss_grasp", "loss_mask", "loss_qpos"} <= set(out)
    backbone = [k for k in before if k.startswith(BACKBONE)]
    assert _changed(before, full, BACKBONE), "the action loss must still train the backbone"
    assert all(torch.equal(full[k], action_only[k]) for k in backbone)
    # the auxiliary losses did train their decoders
    assert _changed(before, full, ("aux.",)) and not _changed(before, action_only, ("aux.",))
    # ... and in stage 2 they reach the backbone (so the equality above is not vacuous)
    _, joint, _ = _step(model, stages["stage2"], batch, cfg)
    assert any(not torch.equal(joint[k], action_only[k]) for k in backbone)


def test_stage3_changes_only_the_expert(setup):
    cfg, model, batch, stages = setup
    before, after, out = _step(model, stages["stage3"], batch, cfg)
    assert set(out) >= {"loss", "loss_flow"} and "loss_action" not in out
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("expert.") for k in changed), sorted(changed)[:5]


def test_stages_1_and_2_leave_the_expert_alone(setup):
    cfg, model, batch, stages = setup
    before, after, _ = _step(model, stages["stage2"], batch, cfg)
    assert not _changed(before, after, ("expert.",))


def test_init_from_a_model_without_expert_adds_one_for_stage3(dataset, setup, tmp_path):
    """`model.init_from` + `use_flow_expert: true` on a VLA trained without an expert: the VLA's
    weights are kept, a seeded new expert is attached, the dataset yields action chunks for it,
    and stage 3 trains the expert alone (Table 5 on a finished VLA)."""
    from sgvla.model import SGVLAProcessor, save_policy

    cfg, model, _, stages = setup
    vla = copy.deepcopy(model)
    vla.expert, vla.config.use_flow_expert = None, False
    save_policy(vla, SGVLAProcessor.from_config(vla.config), tmp_path / "vla")
    run = config_from_dict({"model": {"init_from": str(tmp_path / "vla"), "use_flow_expert": True},
                            "optim": {"lr": 1e-3}, "train": {"global_batch_size": 4, "micro_batch_size": 4},
                            "stage2": {"epochs": 0}, "stage3": {"epochs": 1}})
    mc = modelops.model_config(run)
    assert mc.use_flow_expert
    info = dataclasses.asdict(inspect_dataset(str(dataset), run, mc))
    experts = []
    for _ in range(2):
        torch.manual_seed(5)
        grown, processor = modelops.build_model(run, info["stats"])
        experts.append(grown.expert.state_dict())
    vla_weights = vla.state_dict()
    assert grown.expert is not None and grown.config.use_flow_expert
    assert all(torch.equal(v, grown.state_dict()[k]) for k, v in vla_weights.items())
    assert all(torch.equal(experts[0][k], experts[1][k]) for k in experts[0])  # the seed decides it
    ds, _ = modelops.build_dataset(run, info, grown.config)
    batch = processor.collate([ds[i] for i in (0, 3, 7, 10)])
    before, after, out = _step(grown, stages["stage3"], batch, run)
    assert "loss_flow" in out and _changed(before, after, ("expert.",))
    assert not _changed(before, after, BACKBONE)
    with pytest.raises(SgvlaError, match="already has a flow expert"):
        grown.add_flow_expert()


def test_init_from_takes_new_expert_sizes_and_refuses_other_architecture_settings(setup, tmp_path):
    """With `init_from` the loaded weights fix the architecture: a run's setting that would change it
    is refused by name (it used to be ignored silently), a setting equal to the model's is fine, a
    new flow expert gets the run's expert sizes, and the flow loss's settings always apply."""
    from sgvla.model import SGVLAProcessor, save_policy

    _, model, _, _ = setup
    vla = copy.deepcopy(model)
    vla.expert, vla.config.use_flow_expert = None, False
    save_policy(vla, SGVLAProcessor.from_config(vla.config), tmp_path / "vla")

    def run(**model_section):
        return config_from_dict({"model": {"init_from": str(tmp_path / "vla"), **model_section}})

    grown = modelops.model_config(run(use_flow_expert=True, extra={"expert_hidden_size": 48, "execute_steps": 3}))
    assert (grown.expert_hidden_size, grown.execute_steps) == (48, 3)
    built, _ = modelops.build_model(run(use_flow_expert=True, extra={"expert_hidden_size": 48}), None)
    assert built.expert.width == 48 and built.config.expert_hidden_size == 48
    same = {"n_action_bins": vla.config.n_action_bins, "text_config": {"num_hidden_layers":
                                                                       vla.config.text_config.num_hidden_layers}}
    assert modelops.model_config(run(extra=same)).n_action_bins == vla.config.n_action_bins
    with pytest.raises(SgvlaError, match=r"model\.extra\.text_config\.num_hidden_layers=7"):
        modelops.model_config(run(extra={"text_config": {"num_hidden_layers": 7}}))
    with pytest.raises(SgvlaError, match=r"model\.image_size=112 .*apply only to a model saved without one"):
        modelops.model_config(run(image_size=112))
    with pytest.raises(SgvlaError, match=r"model\.extra\.expert_hidden_size=48"):  # no new expert: refused
        modelops.model_config(run(extra={"expert_hidden_size": 48}))
    # the flow loss's own settings fix no weight: a run continuing a model with an expert may set them,
    # and its expert's loss reads them
    save_policy(model, SGVLAProcessor.from_config(model.config), tmp_path / "with_expert")
    cont = config_from_dict({"model": {"init_from": str(tmp_path / "with_expert"),
                                       "extra": {"flow_samples": 4, "flow_time_beta": [1.0, 1.0]}}})
    built, _ = modelops.build_model(cont, None)
    assert built.expert.config.flow_samples == 4 and built.expert.config.flow_time_beta == [1.0, 1.0]


def test_gradient_checkpointing_gives_the_same_step(setup):
    cfg, model, batch, stages = setup
    results = []
    for checkpointing in (False, True):
        m = copy.deepcopy(model)
        if checkpointing:
            modelops.enable_gradient_checkpointing(m)
        modelops.apply_stage(m, stages["stage2"])
        opt = torch.optim.Adam(m.parameters(), lr=cfg.optim.lr)
        results.append(train_step(m, [batch], opt, modelops.stage_losses(m), cfg,
                                  torch.device("cpu")))
        for part in (m.llm, m.vision.dino, m.vision.siglip):
            assert part.is_activation_checkpointing == checkpointing
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
    assert results[0]["grad_norm"] == pytest.approx(results[1]["grad_norm"], rel=1e-5)


def test_subtask_selection_reaches_the_sampler(dataset):
    cfg = config_from_dict({"data": {"subtasks": ["place"]}, "train": {"global_batch_size": 4},
                            "model": {"aux_decoders": ["grasp"], "use_flow_expert": False}})
    mc = modelops.model_config(cfg)
    info = inspect_dataset(str(dataset), cfg, mc)
    assert info.num_rows == 6  # one of the two episodes
    ds, idx = modelops.build_dataset(cfg, dataclasses.asdict(info), mc)
    assert len(ds) == 12 and len(idx) == 6 and {ds[i]["subtask"] for i in idx} == {"place"}
    none = config_from_dict({**cfg.to_dict(), "data": {"subtasks": ["open"]}})
    with pytest.raises(SgvlaError, match="no 'train' rows"):
        inspect_dataset(str(dataset), none, mc)
    # where the rows are selected (the driver cannot count a Hub dataset's rows per subtask)
    with pytest.raises(SgvlaError, match="no 'train' rows of subtask.*open"):
        modelops.build_dataset(none, dataclasses.asdict(info), mc)


def test_action_normalization_none_trains_on_the_recorded_actions(dataset):
    """data.action_normalization=none: samples carry the recorded actions (clipped to [-1, 1]) and
    the model's un-normalising, which reads the run's statistics from its config, is the identity."""
    cfg = config_from_dict({"data": {"action_normalization": "none"}, "train": {"global_batch_size": 4},
                            "model": {"aux_decoders": [], "use_flow_expert": False}})
    mc = modelops.model_config(cfg)
    info = dataclasses.asdict(inspect_dataset(str(dataset), cfg, mc))
    ds, idx = modelops.build_dataset(cfg, info, mc)
    recorded = np.clip(ds.vec["action"][idx], -1, 1)
    assert np.abs(recorded).max() > 0.1  # the synthetic actions are not all tiny
    got = np.stack([ds[i]["action"].numpy() for i in idx])
    assert np.allclose(got.reshape(recorded.shape), recorded, atol=1e-6)
    model, processor = modelops.build_model(cfg, info["stats"])
    a = np.linspace(-1, 1, 13, dtype=np.float32)
    assert np.allclose(processor.unnormalize(a), a, atol=1e-6)
    q99 = config_from_dict({**cfg.to_dict(), "data": {"action_normalization": "q99"}})
    stats = inspect_dataset(str(dataset), q99, mc).stats
    assert stats["action"]["q99"] != [1.0] * 13  # the default keeps the dataset's own range


def test_max_episodes_keeps_the_first_episodes_of_each_subtask(tmp_path):
    """Learning curves against data: data.max_episodes=N trains on each subtask's first N episodes."""
    data = write_synthetic_dataset(tmp_path / "data", episodes={"train": [3, 4, 5, 6, 7, 8]})  # subtasks cycle
    cfg = config_from_dict({"data": {"max_episodes": 1}, "train": {"global_batch_size": 4},
                            "model": {"aux_decoders": [], "use_flow_expert": False}})
    mc = modelops.model_config(cfg)
    info = dataclasses.asdict(inspect_dataset(str(data), cfg, mc))
    ds, idx = modelops.build_dataset(cfg, info, mc)
    assert len(ds) == 33 and idx == list(range(18))  # episodes 0-3, one per subtask; 4 and 5 repeat pick, place
    few = config_from_dict({**cfg.to_dict(), "data": {"max_episodes": 1, "subtasks": ["pick"]}})
    with pytest.raises(SgvlaError, match="max_episodes=1 leaves 3 samples"):
        modelops.build_dataset(few, info, mc)
    assert cfg.compat_view()["data"]["max_episodes"] == 1
    assert "max_episodes" not in config_from_dict({}).compat_view()["data"]  # older runs still resume
    with pytest.raises(SgvlaError, match="data.max_episodes must be >= 1"):
        config_from_dict({"data": {"max_episodes": 0}})


def test_the_loop_logs_the_losses_the_model_computes(setup):
    cfg, model, batch, stages = setup
    aux = tuple(model.config.aux_decoders)
    for name, want in (("stage1", ("action", *aux)), ("stage2", ("action", *aux)), ("stage3", ("flow",))):
        m = copy.deepcopy(model)
        modelops.apply_stage(m, stages[name])
        assert modelops.stage_losses(m) == tuple(m.compute_losses) == want


# --------------------------------------------------------------------------- driver-side checks


def _ray_untouched():
    import ray

    assert not ray.is_initialized(), "the check must fail before Ray starts"


def test_dataset_without_depth_is_refused_before_ray(dataset, tmp_path):
    import shutil

    broken = tmp_path / "no_depth"
    shutil.copytree(dataset, broken)
    for shard in broken.glob("*/data/*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns(["hand_depth"]), shard)
    with pytest.raises(SgvlaError, match="hand_depth"):
        run_train(TINY, str(broken), tmp_path / "run")
    _ray_untouched()
    nulls = tmp_path / "null_depth"  # recorded without depth: the column is there but empty
    shutil.copytree(dataset, nulls)
    for shard in nulls.glob("*/data/*.parquet"):
        table = pq.read_table(shard)
        i = table.schema.get_field_index("hand_depth")
        field = table.schema.field(i)
        pq.write_table(table.set_column(i, field, pa.nulls(len(table), field.type)), shard)
    with pytest.raises(SgvlaError, match="stores no values for \\['hand_depth'\\]"):
        run_train(TINY, str(nulls), tmp_path / "run")
    # a preset that does not read hand depth is fine with it
    cfg = config_from_dict({"model": {"views": ["head_rgb", "head_depth"]},
                            "train": {"global_batch_size": 4}})
    assert inspect_dataset(str(broken), cfg, modelops.model_config(cfg)).num_rows == 12


def test_output_holding_another_run_and_incompatible_resume(dataset, tmp_path):
    from sgvla.train.config import load_config

    out = tmp_path / "run"
    cfg = load_config(TINY, ["train.global_batch_size=4", "train.micro_batch_size=4"])
    write_run_file(out, cfg, str(dataset.resolve()), 1)
    assert json.loads((out / "run.json").read_text())["software"] == provenance.software()
    small = ["train.global_batch_size=4", "train.micro_batch_size=4"]
    # A start that failed before its first step (run.json written, then no CPUs / no cluster) leaves
    # the folder free: the corrected command starts anew, with or without --resume.
    for resume in (False, True):
        assert check_output(out, resume, cfg, str(dataset.resolve())) is None
    (out / "metrics.jsonl").write_text('{"global_step": 1}\n')  # a run that took steps
    with pytest.raises(SgvlaError, match="already holds a training run.*--resume"):
        run_train(TINY, str(dataset), out, overrides=small)
    with pytest.raises(SgvlaError, match="model.aux_decoders"):
        run_train(TINY, str(dataset), out, resume=True, overrides=small + ["model.aux_decoders=[grasp]"])
    with pytest.raises(SgvlaError, match="holds no run to continue"):
        run_train(TINY, str(dataset), tmp_path / "fresh", resume=True, overrides=small)
    _ray_untouched()


@pytest.mark.parametrize("overrides, words", [
    (["train.sed=1"], "did you mean 'seed'"),
    (["train.global_batch_size=64"], "fewer than one optimizer step"),
    (["train.global_batch_size=12", "train.micro_batch_size=8"], "not a multiple"),
    (["data.configs=[tidy_house]"], "tidy_house"),
    (["stage3.epochs=1", "model.use_flow_expert=false"], "use_flow_expert"),
])
def test_bad_input_is_one_clear_error_before_ray(dataset, tmp_path, overrides, words):
    with pytest.raises(SgvlaError, match=words):
        run_train(TINY, str(dataset), tmp_path / "run", workers=1, overrides=overrides)
    _ray_untouched()


def test_each_rank_draws_its_own_noise_after_an_identical_init():
    """Flow noise (torch.randn_like) must differ between ranks, the initial weights must not."""
    from sgvla.train.loop import seed_rank

    draws, inits = [], []
    for rank in (0, 1):
        torch.manual_seed(7)  # what every rank does before building the model
        inits.append(torch.randn(5))
        seed_rank(7, rank)
        draws.append(torch.randn(5))
    assert torch.equal(inits[0], inits[1]) and not torch.equal(draws[0], draws[1])
    seed_rank(7, 1)
    assert torch.equal(torch.randn(5), draws[1])  # reproducible per rank


def test_fsdp_root_keeps_the_batch_out_of_the_bf16_cast():
    """FSDP2 casts forward inputs to param_dtype by default: targets in metres and pixels must not be."""
    from sgvla.train.modelops import fsdp_policies

    blocks, root = fsdp_policies("cuda")
    assert blocks.param_dtype == torch.bfloat16 and blocks.cast_forward_inputs
    assert root.param_dtype == torch.bfloat16 and root.reduce_dtype == torch.float32
    assert not root.cast_forward_inputs
    assert not fsdp_policies("cpu")[1].cast_forward_inputs
