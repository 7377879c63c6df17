"""SG-VLA model tests on the tiny preset (random weights, nothing downloaded).

Inputs are shaped exactly like the training-data pipeline's samples (see the contract in
sgvla/model/processing_sgvla.py): raw frames per view (T, S, S[, 3]), a 13-D normalised action, an
(H, 13) chunk with a padding flag, and the auxiliary targets with validity flags.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sgvla.errors import SgvlaError
from sgvla.model import (
    ActionTokenizer,
    SGVLAConfig,
    SGVLAForActionPrediction,
    SGVLAProcessor,
    build_byte_tokenizer,
    byte_tokenizer_action_begin,
    load_components,
    load_model,
    load_policy,
    save_policy,
)
from sgvla.transforms import normalize_for_towers, raw_frames, unnormalize_action
from sgvla.vocab import AUX_NAMES, VIEWS, view_kind

STATS = {"mean": [0.0] * 13, "std": [1.0] * 13, "min": [-3.0] * 13, "max": [3.0] * 13,
         "q01": [-2.0 + 0.1 * i for i in range(13)], "q99": [1.0 + 0.2 * i for i in range(13)]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded (and the CI machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**overrides) -> SGVLAForActionPrediction:
    torch.manual_seed(0)
    overrides.setdefault("action_stats", STATS)
    return SGVLAForActionPrediction(SGVLAConfig.from_preset("tiny", **overrides))


def proc(model: SGVLAForActionPrediction) -> SGVLAProcessor:
    """The processor of a random-init model (its config, the byte tokenizer)."""
    return SGVLAProcessor.from_config(model.config)


def make_sample(config: SGVLAConfig, seed: int, instruction: str = "Pick up the red bowl.") -> dict:
    """One item as the data pipeline produces it."""
    g = np.random.default_rng(seed)
    s, h = config.image_size, config.chunk_size
    frames = [{v: g.integers(0, 256, (s, s, 3), dtype=np.uint8) if view_kind(v) == "rgb"
               else g.integers(0, 5000, (s, s), dtype=np.uint16) for v in config.views}
              for _ in range(config.history + 1)]
    pixels = raw_frames(frames, config.views)
    quat = g.normal(size=4)
    return {
        "pixel_values": pixels,
        "instruction": instruction,
        "subtask": "pick",
        "action": g.uniform(-1, 1, 13).astype(np.float32),
        "action_chunk": g.uniform(-1, 1, (h, 13)).astype(np.float32),
        "action_chunk_pad": np.arange(h) >= h - seed % 3,
        "aux": {
            "global_pos": g.normal(size=2).astype(np.float32),
            "grasp": np.float32(seed % 2),
            "obj_pose": np.concatenate([g.normal(size=3), quat / np.linalg.norm(quat)]).astype(np.float32),
            "qpos": g.normal(size=12).astype(np.float32),
            "head_mask": (g.random((128, 128)) > 0.8).astype(np.float32),
            "hand_mask": (g.random((128, 128)) > 0.7).astype(np.float32),
        },
        "aux_valid": {k: True for k in ("global_pos", "grasp", "obj_pose", "qpos", "head_mask", "hand_mask")},
    }


def make_batch(model: SGVLAForActionPrediction, n: int = 2) -> dict:
    instr = ["Pick up the red bowl.", "open the fridge", "place the apple on the table"]
    return proc(model).collate([make_sample(model.config, i, instr[i % 3]) for i in range(n)])


def observation(seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    return {
        "head_rgb": g.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "hand_rgb": g.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "head_depth": g.integers(0, 4000, (128, 128), dtype=np.uint16),
        "hand_depth": g.integers(0, 4000, (128, 128, 1)).astype(np.int32),
    }


# -- configuration and sizes ------------------------------------------------------------------

def test_full_size_parameter_counts_on_meta_device():
    config = SGVLAConfig.from_preset("sgvla-1.3b")
    with torch.device("meta"):
        model = SGVLAForActionPrediction(config)
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for p in model.expert.parameters())
    assert 1.2e9 <= total <= 1.4e9, total
    assert 90e6 <= expert <= 110e6, expert
    assert config.n_image_tokens == 4 * 256 and config.vision_dim == 1024 + 1152
    assert model.projector.net[0].weight.shape == (4 * 2176, 2176)


def test_config_rejects_bad_settings():
    with pytest.raises(SgvlaError, match="views"):
        SGVLAConfig.from_preset("tiny", views=["head_rgb", "left_rgb"])
    with pytest.raises(SgvlaError, match="views"):
        SGVLAConfig.from_preset("tiny", views=[])
    with pytest.raises(SgvlaError, match="history"):
        SGVLAConfig.from_preset("tiny", history=-1)
    with pytest.raises(SgvlaError, match="aux_decoders"):
        SGVLAConfig.from_preset("tiny", aux_decoders=["depth"])
    with pytest.raises(SgvlaError, match="subtask_modes"):
        SGVLAConfig.from_preset("tiny", subtask_modes={"pick": "diffusion"})
    with pytest.raises(SgvlaError, match="preset"):
        SGVLAConfig.from_preset("huge")
    with pytest.raises(SgvlaError, match="crop_area"):
        SGVLAConfig.from_preset("tiny", crop_area=1.5)


# -- shapes -------------------------------------------------------------------------------------

VIEW_SETS = [list(c) for r in range(1, 5) for c in itertools.combinations(VIEWS, r)]


@pytest.mark.parametrize("views", VIEW_SETS, ids=["+".join(v) for v in VIEW_SETS])
def test_every_view_combination_runs(views):
    history = 1 if len(views) == 2 else 0
    model = tiny(views=views, history=history)
    c = model.config
    batch = make_batch(model, 2)
    assert {v: tuple(x.shape[:2]) for v, x in batch["pixel_values"].items()} == {v: (2, history + 1) for v in views}
    images = model.encode_images(batch["pixel_values"])
    assert images.shape == (2, (history + 1) * len(views) * 16, c.text_config.hidden_size)
    out = model(**batch)
    assert set(out.losses) == {"action", *AUX_NAMES, "flow"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    cams = {v.split("_")[0] for v in views}
    assert set(out.aux_predictions["mask"]) == cams
    for cam in cams:
        assert out.aux_predictions["mask"][cam].shape == (2, 64, 64)  # the tiny mask_size; targets 128
    assert out.aux_predictions["qpos"].shape == (2, 12)
    assert out.aux_predictions["obj_pose"].shape == (2, 7)
    torch.testing.assert_close(out.aux_predictions["obj_pose"][:, 3:].norm(dim=-1), torch.ones(2))
    pred = model.eval().predict_action(observation(), "pick up the bowl", subtask="pick", processor=proc(model))
    assert pred.mode == "flow" and pred.chunk.shape == (8, 13) and pred.execute.shape == (2, 13)


# -- action tokens and prompts ------------------------------------------------------------------

def test_action_tokens_round_trip_within_half_a_bin():
    tok = ActionTokenizer(begin=259, n_bins=256)
    a = torch.cat([torch.linspace(-1, 1, 4001), torch.tensor([-1.0, 1.0, 0.0, 1 / 128, -1 / 128])])
    ids = tok.encode(a)
    assert int(ids.min()) >= 259 and int(ids.max()) <= 259 + 255
    assert (tok.decode(ids) - a).abs().max() <= tok.width / 2 + 1e-6
    assert tok.decode(tok.encode(torch.tensor([5.0, -7.0]))).tolist() == [1 - tok.width / 2, -1 + tok.width / 2]
    with pytest.raises(SgvlaError):
        tok.decode(torch.tensor([12]))


@pytest.mark.parametrize("n_bins", [255, 64])
def test_actions_snapped_to_the_token_grid_survive_tokenizing_unchanged(n_bins):
    """`sgvla demos --token-grid` snaps with `snap_to_bins`: exactly the tokenizer's bin centres, so
    a policy that outputs a demo's tokens outputs its actions bit for bit."""
    from sgvla.transforms import snap_to_bins

    tok = ActionTokenizer(begin=0, n_bins=n_bins)
    a = np.random.default_rng(0).uniform(-1.2, 1.2, (500, 13)).astype(np.float32)
    snapped = snap_to_bins(a, n_bins)
    assert snapped.dtype == np.float32
    assert np.array_equal(tok.decode(tok.encode(a)).numpy(), snapped)
    assert np.array_equal(tok.decode(tok.encode(snapped)).numpy(), snapped)


def test_hold_still_decodes_to_exactly_zero_by_default():
    """With an even bin count 0 decodes to -w/2, a drift delta-joint control integrates every step."""
    from sgvla.model import SGVLAConfig

    tok = ActionTokenizer(begin=0, n_bins=SGVLAConfig.n_action_bins)
    assert tok.decode(tok.encode(torch.zeros(13))).abs().max().item() == 0.0
    even = ActionTokenizer(begin=0, n_bins=256)
    assert even.decode(even.encode(torch.zeros(1))).item() == pytest.approx(even.width / 2)


def test_byte_tokenizer_spends_about_a_token_per_word_and_round_trips_any_text():
    """The offline tokenizer's merges shorten the tiny preset's prompt (the sequence sets its step
    cost); the chat specials keep Qwen's ids, and text the merges never saw still encodes exactly."""
    tok, proc = build_byte_tokenizer(), SGVLAProcessor()
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [256, 257, 258]
    assert (proc.pad_id, proc.end_ids) == (256, [258, 256])  # what collate pads with and ends answers with
    prompt = proc.prompt("close the drawer")
    ids = proc.prompt_ids("close the drawer")
    assert len(ids) < len(prompt.encode()) / 3 and tok.decode(ids) == prompt
    for text in ("pick up the 024 bowl", "Ünïcode ✓ and\ttabs\n", "<|im_start|>user\nxyzzy<|im_end|>"):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert proc.action_token_begin == byte_tokenizer_action_begin() == len(tok.get_vocab())
    again = build_byte_tokenizer()  # the merges depend on the prompt texts alone
    assert again.get_vocab() == tok.get_vocab() and again(prompt)["input_ids"] == tok(prompt)["input_ids"]


def test_collate_puts_loss_only_on_action_and_end_tokens():
    model = tiny(views=["head_rgb"])
    processor = proc(model)
    samples = [make_sample(model.config, i, instr) for i, instr in enumerate(["open the fridge", "Pick up X."])]
    batch = processor.collate(samples)
    for i, s in enumerate(samples):
        prompt = processor.prompt_ids(s["instruction"])
        n = len(prompt) + 15
        assert batch["input_ids"][i, : len(prompt)].tolist() == prompt
        assert batch["attention_mask"][i].sum() == n
        labels = batch["labels"][i]
        assert (labels[: len(prompt)] == -100).all() and (labels[n:] == -100).all()
        action_ids = labels[len(prompt): len(prompt) + 13]
        assert torch.equal(action_ids, processor.action_tokenizer.encode(s["action"]))
        assert processor.tokenizer.decode(labels[n - 2: n]) == "<|im_end|><|endoftext|>"
        assert processor.tokenizer.convert_ids_to_tokens(int(action_ids[0])).startswith("<|extra_")
    assert "What action should the robot take to pick up x?" in processor.prompt("Pick up X.")
    del samples[1]["aux"]["qpos"]
    with pytest.raises(SgvlaError, match="lacks 'qpos'"):
        processor.collate(samples)


# -- training switches --------------------------------------------------------------------------

def backbone_grads(model):
    return [p.grad for m in (model.vision, model.projector, model.llm) for p in m.parameters() if p.requires_grad]


def test_stage1_detach_blocks_aux_gradients_but_not_the_action_loss():
    model = tiny(views=["head_rgb", "hand_depth"])
    batch = make_batch(model, 2)
    model.configure_stage(1)
    aux = list(model.config.aux_decoders)
    model(**batch, compute=aux).loss.backward()
    assert all(g is None or not g.any() for g in backbone_grads(model))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux.heads["grasp"].parameters())
    model.zero_grad()
    model(**batch, compute=["action"]).loss.backward()
    grads = backbone_grads(model)
    assert model.llm.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    assert model.vision.dino.encoder.layer[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert sum(int(g is not None and g.any()) for g in grads) > len(grads) // 2
    model.zero_grad()
    model.configure_stage(2)
    model(**batch, compute=aux).loss.backward()
    assert model.llm.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    # configure_stage alone (no trainer helper) leaves no trainable parameter without a loss (DDP)
    assert not any(p.requires_grad for p in model.expert.parameters()) and model.training


def test_stage3_trains_only_the_expert():
    model = tiny(views=["head_rgb"])
    model.configure_stage(3)
    assert model.expert.training and not any(m.training for m in model.vlm_modules())
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"expert"}
    out = model(**make_batch(model, 2))
    assert set(out.losses) == {"flow"}
    out.loss.backward()
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(p.grad is not None for p in model.expert.parameters())
    with pytest.raises(SgvlaError, match="use_flow_expert"):
        tiny(views=["head_rgb"], use_flow_expert=False).configure_stage(3)


def test_the_vlms_initialisation_does_not_depend_on_the_expert():
    """Same seed, with no expert, the default one or a larger one: the same VLM, tensor for tensor.
    Otherwise a change of the expert's sizes moves every VLM trained with it (and the seeds that CI's
    memorisation check measured)."""
    def vlm(**overrides) -> dict[str, torch.Tensor]:
        return {k: v for k, v in tiny(**overrides).state_dict().items() if not k.startswith("expert.")}

    bare = vlm(use_flow_expert=False)
    for sizes in ({}, {"expert_hidden_size": 128, "expert_intermediate_size": 256, "chunk_size": 16}):
        other = vlm(use_flow_expert=True, **sizes)
        assert other.keys() == bare.keys()
        assert [k for k in bare if not torch.equal(bare[k], other[k])] == [], sizes


def test_invalid_aux_targets_have_zero_weight():
    model = tiny(views=["head_rgb", "hand_rgb"])
    batch = make_batch(model, 2)
    names = list(model.config.aux_decoders)
    base = model(**batch, compute=names).losses
    for key in ("global_pos", "grasp", "obj_pose", "qpos", "head_mask", "hand_mask"):
        name = "mask" if key.endswith("_mask") else key
        b = {**batch, "aux": dict(batch["aux"]), "aux_valid": dict(batch["aux_valid"])}
        b["aux_valid"][key] = torch.tensor([True, False])
        ref = model(**b, compute=[name]).losses[name]
        b["aux"][key] = batch["aux"][key].clone()
        b["aux"][key][1] = float("nan")
        assert torch.equal(model(**b, compute=[name]).losses[name], ref), key
        b["aux"][key][1] = 1e6
        assert torch.equal(model(**b, compute=[name]).losses[name], ref), key
        assert not torch.equal(ref, base[name]), key
        b["aux_valid"][key] = torch.tensor([False, False])
        if name != "mask":
            model.zero_grad()
            loss = model(**b, compute=[name]).losses[name]
            assert loss.item() == 0.0
            loss.backward()
            assert all(p.grad is None or not p.grad.any() for p in model.aux.heads[name].parameters())


def test_a_smaller_mask_decoder_learns_each_cells_fraction_of_the_target():
    """The tiny preset decodes 64 px masks against the scene's 128 px targets: the loss pools the
    target 2x2 into soft cell fractions, equal to the loss at a target of that size given directly;
    a size that does not divide the target's is refused by name."""
    dec = tiny(views=["head_rgb"]).aux
    assert dec.mask_size == 64
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 128, 128, generator=g) > 0.7).float()
    logits = {"head": torch.randn(2, 64, 64, generator=g)}
    ok = {"head_mask": torch.ones(2, dtype=torch.bool)}
    fractions = target.reshape(2, 64, 2, 64, 2).mean((2, 4))
    assert set(fractions.unique().tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    torch.testing.assert_close(dec.loss("mask", logits, {"head_mask": target}, ok),
                               dec.loss("mask", logits, {"head_mask": fractions}, ok))
    with pytest.raises(SgvlaError, match=r"head_mask is \(100, 100\).*mask_size=64"):
        dec.loss("mask", logits, {"head_mask": torch.zeros(2, 100, 100)}, ok)


def test_bool_masks_of_the_data_pipeline_give_the_loss_of_their_float_values():
    """The data pipeline ships masks raw (bool); the processor keeps them bool and the loss reads them as 0/1."""
    model, names = tiny(views=["head_rgb", "hand_rgb"]), ("head_mask", "hand_mask")
    samples = [make_sample(model.config, i) for i in range(2)]
    as_bool = [{**s, "aux": {**s["aux"], **{k: s["aux"][k] > 0.5 for k in names}}} for s in samples]
    want = model(**proc(model).collate(samples), compute=["mask"]).losses["mask"]
    batch = proc(model).collate(as_bool)
    assert all(batch["aux"][k].dtype == torch.bool for k in names)
    assert torch.equal(model(**batch, compute=["mask"]).losses["mask"], want)


def prefix_kv(model, batch: dict):
    """(per-layer prefix K/V, prefix mask, prefix length) of a batch: what the flow expert reads."""
    emb, attn, labels = model._assemble(batch["input_ids"], batch["attention_mask"],
                                        model.encode_images(batch["pixel_values"]), batch["labels"])
    plen, pmask = model._prefix_extent(attn, labels)
    kv = [(layer.keys, layer.values) for layer in model._llm_prefix_cache(emb, attn).past_key_values.layers]
    return kv, pmask, plen


def test_padded_chunk_steps_do_not_count_in_the_flow_loss():
    model = tiny(views=["head_rgb"], aux_decoders=[])
    batch = make_batch(model, 2)
    with torch.no_grad():
        kv, pmask, plen = prefix_kv(model, batch)
        actions = batch["action_chunk"]
        noise, t = torch.randn_like(actions), torch.tensor([0.3, 0.8])
        pad = torch.zeros(2, 8, dtype=torch.bool)
        pad[0, 5:] = True
        pad[1, 2:] = True
        x_t = t.view(-1, 1, 1) * noise + (1 - t.view(-1, 1, 1)) * actions
        v = model.expert.velocity(x_t, t, kv, pmask, plen, model.llm.model.rotary_emb)
        per_step = ((v - (noise - actions)) ** 2).mean(-1)
        loss = model.expert.loss(actions, pad, kv, pmask, plen, model.llm.model.rotary_emb, noise=noise, t=t)
    torch.testing.assert_close(loss, per_step[~pad].mean())
    assert not torch.allclose(loss, per_step.mean())


def test_flow_samples_draw_several_noises_per_sample_on_one_prefix():
    """flow_samples K: the loss of the B samples with K (noise, t) draws each is the plain loss of the
    B*K rows with those draws, each sample's prefix and pads repeated K times in place."""
    model = tiny(views=["head_rgb"], aux_decoders=[])
    batch = make_batch(model, 2)
    k = 3
    with torch.no_grad():
        kv, pmask, plen = prefix_kv(model, batch)
        actions = batch["action_chunk"]
        pad = torch.zeros(2, 8, dtype=torch.bool)
        pad[1, 4:] = True
        noise, t = torch.randn(2 * k, *actions.shape[1:]), torch.rand(2 * k)
        rep = [(a.repeat_interleave(k, 0), b.repeat_interleave(k, 0)) for a, b in kv]
        want = model.expert.loss(actions.repeat_interleave(k, 0), pad.repeat_interleave(k, 0), rep,
                                 pmask.repeat_interleave(k, 0), plen.repeat_interleave(k, 0),
                                 model.llm.model.rotary_emb, noise=noise, t=t)
        model.config.flow_samples = k
        got = model.expert.loss(actions, pad, kv, pmask, plen, model.llm.model.rotary_emb, noise=noise, t=t)
        assert torch.equal(got, want)
        assert model.expert.loss(actions, pad, kv, pmask, plen, model.llm.model.rotary_emb).isfinite()
    with pytest.raises(SgvlaError, match="flow_samples"):
        SGVLAConfig.from_preset("tiny", flow_samples=0)


def test_token_accuracy_is_argmax_agreement_on_action_tokens():
    model = tiny(views=["head_rgb"], aux_decoders=[]).eval()
    # fixed at construction, not on first processor use
    assert model.config.action_token_begin == byte_tokenizer_action_begin()
    batch = make_batch(model, 2)
    with torch.no_grad():
        out = model(**batch, compute=["action"])
        emb, attn, _ = model._assemble(batch["input_ids"], batch["attention_mask"],
                                       model.encode_images(batch["pixel_values"]))
        logits = model.llm(inputs_embeds=emb, attention_mask=attn).logits
    n_img, length = emb.shape[1] - batch["input_ids"].shape[1], batch["input_ids"].shape[1]
    pred = logits[:, n_img: n_img + length - 1].argmax(-1)  # predictions of text positions 1..L-1
    target = batch["labels"][:, 1:]
    is_act = model.action_tokenizer.is_action(target)
    assert 0.0 <= out.token_accuracy.item() <= 1.0
    torch.testing.assert_close(out.token_accuracy, (pred[is_act] == target[is_act]).float().mean())
    labels = batch["labels"].clone()
    sel = target != -100
    labels[:, 1:][sel] = pred[sel]
    assert model.action_tokenizer.is_action(labels).sum() > 0
    with torch.no_grad():
        assert model(**{**batch, "labels": labels}, compute=["action"]).token_accuracy.item() == 1.0


# -- decoding -----------------------------------------------------------------------------------

@torch.no_grad()
def uncached_greedy_action_tokens(model, pixels, ids):
    """Reference for `decode_action_tokens`: the whole sequence re-run for every new token."""
    embeds = model._inference_inputs(pixels, ids)
    tokens, logits = [], []
    for _ in range(model.config.action_dim):
        hidden = model.llm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        nxt, lg = model._best_action_token(hidden[:, -1])
        tokens.append(nxt)
        logits.append(lg)
        embeds = torch.cat([embeds, model.llm.get_input_embeddings()(nxt).unsqueeze(1)], dim=1)
    return torch.stack(tokens, dim=1), torch.stack(logits, dim=1)


def test_cached_decoding_equals_uncached_and_generate():
    model = tiny(views=["head_rgb", "hand_depth"], history=1, text_config={"initializer_range": 0.2}).eval()
    pixels = make_batch(model, 2)["pixel_values"]
    ids = torch.tensor([proc(model).prompt_ids("pick up the bowl")] * 2)
    cached, logits_c = model.decode_action_tokens(pixels, ids, return_logits=True)
    plain, logits_p = uncached_greedy_action_tokens(model, pixels, ids)
    assert cached.shape == (2, 13) and len(set(cached[0].tolist())) > 3
    assert torch.equal(cached, plain)
    torch.testing.assert_close(logits_c, logits_p, atol=1e-4, rtol=1e-4)
    assert torch.equal(cached, model.generate_action_tokens(pixels, ids))
    assert model.action_tokenizer.is_action(cached).all()


def test_token_chunks_encode_the_next_actions_and_execute_them_all():
    """token_chunk=K: the answer is the first K actions of the sample's chunk (K x 13 tokens, then the
    end tokens); greedy decoding emits K x 13 action tokens and predict_action executes all K."""
    model = tiny(views=["head_rgb"], token_chunk=3, text_config={"initializer_range": 0.2}).eval()
    processor = proc(model)
    sample = make_sample(model.config, 1)
    batch = processor.collate([sample])
    n_prompt = len(processor.prompt_ids(sample["instruction"]))
    labels = batch["labels"][0]
    answer = labels[n_prompt: n_prompt + 39]
    assert torch.equal(answer, processor.action_tokenizer.encode(sample["action_chunk"][:3]).reshape(-1))
    assert processor.tokenizer.decode(labels[n_prompt + 39: n_prompt + 41]) == "<|im_end|><|endoftext|>"
    ids = torch.tensor([processor.prompt_ids("pick up the bowl")])
    decoded = model.decode_action_tokens(batch["pixel_values"], ids)
    assert decoded.shape == (1, 39) and torch.equal(decoded, model.generate_action_tokens(batch["pixel_values"], ids))
    pred = model.predict_action(observation(1), "pick up the bowl", mode="tokens", processor=processor)
    assert pred.chunk.shape == (3, 13) and np.array_equal(pred.execute, pred.chunk)
    with pytest.raises(SgvlaError, match="token_chunk"):
        tiny(views=["head_rgb"], token_chunk=9)  # more than the pipeline's chunk_size (8)


def test_predict_action_modes_and_unnormalisation():
    model = tiny(views=["head_rgb", "hand_depth"], history=2).eval()
    obs = observation(1)
    obs["history"] = [observation(2)]  # shorter than history=2: padded with its oldest frame
    processor = proc(model)
    tok = model.predict_action(obs, "open the fridge", subtask="open", processor=processor)
    assert tok.mode == "tokens" and tok.chunk.shape == (1, 13) and tok.execute.shape == (1, 13)
    q01, q99 = np.array(STATS["q01"]), np.array(STATS["q99"])
    expect = 0.5 * (tok.normalized_chunk[0] + 1) * (q99 - q01) + q01
    np.testing.assert_allclose(tok.action, expect, rtol=1e-5, atol=1e-5)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    flow1 = model.predict_action(obs, "pick up the bowl", subtask="pick", generator=g1, processor=processor)
    flow2 = model.predict_action(obs, "pick up the bowl", mode="flow", generator=g2, processor=processor)
    assert flow1.mode == "flow" and np.array_equal(flow1.chunk, flow2.chunk)
    assert (flow1.chunk >= q01 - 1e-5).all() and (flow1.chunk <= q99 + 1e-5).all()
    assert flow1.normalized_chunk.shape == (8, 13) and np.abs(flow1.normalized_chunk).max() <= 1.0
    np.testing.assert_allclose(flow1.chunk, unnormalize_action(flow1.normalized_chunk.astype(np.float64), q01, q99),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(flow1.execute, flow1.chunk[:2])
    model.config.subtask_modes["pick"] = "tokens"
    assert model.predict_action(obs, "pick up the bowl", subtask="pick", processor=processor).mode == "tokens"
    with pytest.raises(SgvlaError, match="subtask"):
        model.predict_action(obs, "pick up the bowl", processor=processor)
    with pytest.raises(SgvlaError, match="lacks view"):
        model.predict_action({"head_rgb": obs["head_rgb"]}, "pick up the bowl", mode="tokens", processor=processor)
    no_expert = tiny(views=["head_rgb"], use_flow_expert=False).eval()
    processor = proc(no_expert)
    assert no_expert.predict_action(obs, "pick up the bowl", subtask="pick", processor=processor).mode == "tokens"
    with pytest.raises(SgvlaError, match="flow expert"):
        no_expert.predict_action(obs, "pick up the bowl", mode="flow", processor=processor)
    with pytest.raises(SgvlaError, match="disagree on views, history"):  # another model's processor
        model.predict_action(obs, "pick up the bowl", mode="tokens", processor=processor)


def test_pixels_in_another_format_are_a_clear_error():
    model = tiny(views=["head_rgb", "hand_depth"], history=1)
    px = make_batch(model, 1)["pixel_values"]
    for bad in ({"unit": torch.rand(1, 4, 3, 56, 56)},  # the half-float unit images of earlier versions
                {**px, "hand_depth": px["hand_depth"].int()},  # depth widened from uint16
                {**px, "head_rgb": px["head_rgb"][:, :1]},  # one frame short of the history
                {"head_rgb": px["head_rgb"]}):  # a view missing
        with pytest.raises(SgvlaError, match="raw frames"):
            model.encode_images(bad)
    with pytest.raises(SgvlaError, match="raw frames"):  # samples built for another model's views
        proc(model).collate([make_sample(tiny(views=["head_rgb"], history=1).config, 0)])


def test_history_frames_are_oldest_first():
    model = tiny(views=["head_rgb"], history=2)
    obs = observation(0)
    old, older = observation(5), observation(6)
    obs["history"] = [older, old]
    px = proc(model).observation_pixels(obs)["head_rgb"]
    for i, frame in enumerate([older, old, obs]):
        one = proc(tiny(views=["head_rgb"])).observation_pixels(frame)["head_rgb"][0]
        assert torch.equal(px[i], one)


# -- flow expert --------------------------------------------------------------------------------

def test_flow_expert_learns_a_toy_target_and_sampling_reproduces_it():
    model = tiny(views=["head_rgb"], aux_decoders=[])
    steps = np.linspace(0, 1, 8)[:, None]
    dims = np.arange(13)[None] / 13
    targets = [0.8 * np.sin(2 * np.pi * (steps + dims)), 0.6 * np.cos(3 * steps + 5 * dims) - 0.2]
    instr = ["pick up the red bowl", "open the fridge"]
    samples = [{**make_sample(model.config, i, instr[i]), "action_chunk": targets[i].astype(np.float32)}
               for i in range(2)]
    batch = proc(model).collate(samples)
    model.configure_stage(3)
    with torch.no_grad():  # the frozen prefix is the same every step: compute it once
        emb, attn, labels = model._assemble(batch["input_ids"], batch["attention_mask"],
                                            model.encode_images(batch["pixel_values"]), batch["labels"])
        plen, pmask = model._prefix_extent(attn, labels)
        cache = model._llm_prefix_cache(emb, attn).past_key_values
    rep = 8
    kv = [(layer.keys.repeat(rep, 1, 1, 1), layer.values.repeat(rep, 1, 1, 1)) for layer in cache.layers]
    chunk = batch["action_chunk"].repeat(rep, 1, 1)
    opt = torch.optim.Adam(model.expert.parameters(), lr=3e-3)
    losses = []
    for _ in range(400):
        loss = model.expert.loss(chunk, None, kv, pmask.repeat(rep, 1), plen.repeat(rep), model.llm.model.rotary_emb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:10])
    model.eval()
    for i in range(2):
        ids = torch.tensor([proc(model).prompt_ids(instr[i])])
        pixels = {k: v[i: i + 1] for k, v in batch["pixel_values"].items()}
        x = model.sample_action_chunk(pixels, ids, generator=torch.Generator().manual_seed(1))[0].numpy()
        err_own, err_other = np.abs(x - targets[i]).mean(), np.abs(x - targets[1 - i]).mean()
        assert err_own < 0.25 and err_own < 0.5 * err_other, (err_own, err_other)


def test_sampling_equals_an_euler_loop_over_velocity():
    """`sample` prepares the constant parts once; it must match the plain loop over `velocity`."""
    model = tiny(views=["head_rgb"], aux_decoders=[]).eval()
    batch = make_batch(model, 2)
    with torch.no_grad():
        kv, pmask, plen = prefix_kv(model, batch)
    assert not pmask.all()  # the answer tokens in the cache are masked out
    rotary, steps = model.llm.model.rotary_emb, 5
    noise = torch.randn(2, model.config.chunk_size, model.config.action_dim, generator=torch.Generator().manual_seed(3))
    for mask in (pmask, None):
        x = noise.clone()
        with torch.no_grad():
            for i in range(steps):
                t = torch.full((2,), 1.0 - i / steps)
                x = x - model.expert.velocity(x, t, kv, mask, plen, rotary) / steps
        torch.testing.assert_close(model.expert.sample(kv, mask, plen, rotary, noise, steps), x, rtol=0, atol=0)
    ones = torch.ones_like(pmask)
    torch.testing.assert_close(model.expert.sample(kv, None, plen, rotary, noise, steps),
                               model.expert.sample(kv, ones, plen, rotary, noise, steps))


def test_batched_prediction_equals_one_call_per_observation():
    """Instructions of different token lengths in one batch (left padding, position ids counting
    real tokens only) give every row the actions it gets alone: tokens greedy and expected, and
    flow from the same per-row noise."""
    model = tiny(views=["head_rgb", "hand_depth"], history=1, text_config={"initializer_range": 0.2}).eval()
    processor = proc(model)
    texts = ["open the fridge", "pick up the red bowl from the kitchen counter", "close"]
    obs = [{**observation(i), "history": [observation(10 + i)]} for i in range(3)]
    lengths = {len(processor.prompt_ids(t)) for t in texts}
    assert len(lengths) == 3, lengths

    def gens():
        return [torch.Generator().manual_seed(7 + i) for i in range(3)]

    for mode, decoding in (("tokens", "greedy"), ("tokens", "expected"), ("flow", None)):
        batched = model.predict_actions(obs, texts, mode=mode, generators=gens(), processor=processor,
                                        token_decoding=decoding)
        for o, t, g, b in zip(obs, texts, gens(), batched, strict=True):
            one = model.predict_action(o, t, mode=mode, generator=g, processor=processor, token_decoding=decoding)
            np.testing.assert_allclose(b.normalized_chunk, one.normalized_chunk, rtol=0, atol=1e-5,
                                       err_msg=f"{mode}/{decoding}: {t!r}")
            assert b.mode == one.mode and b.execute.shape == one.execute.shape
    tokens = model.predict_actions(obs, texts, mode="tokens", processor=processor)
    assert len({tuple(p.normalized_chunk.ravel()) for p in tokens}) == 3  # the rows differ: a real check
    with pytest.raises(SgvlaError, match="one instruction per observation"):
        model.predict_actions(obs, texts[:2], mode="tokens", processor=processor)


# -- persistence and errors ---------------------------------------------------------------------

def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = tiny(views=["head_rgb", "head_depth"])
    batch = make_batch(model, 2)
    model(**batch, compute=["mask"])  # move the BatchNorm running stats off their init
    model.eval()
    save_policy(model, proc(model), tmp_path / "ckpt")
    save_policy(model, proc(model), tmp_path / "ckpt")  # overwriting an existing checkpoint works
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= files
    loaded, processor = load_policy(tmp_path / "ckpt")
    loaded.eval()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config.action_stats == STATS and loaded.config.views == ["head_rgb", "head_depth"]
    assert loaded.llm.lm_head.weight.data_ptr() == loaded.llm.model.embed_tokens.weight.data_ptr()
    torch.manual_seed(0)
    out_a = model(**batch)
    torch.manual_seed(0)
    out_b = loaded(**batch)
    assert all(torch.equal(out_a.losses[k], out_b.losses[k]) for k in out_a.losses)
    obs = observation()
    assert np.array_equal(model.predict_action(obs, "open the fridge", mode="tokens", processor=proc(model)).action,
                          loaded.predict_action(obs, "open the fridge", mode="tokens", processor=processor).action)


def test_clear_errors_for_mismatched_views_and_checkpoints(tmp_path):
    model = tiny(views=["head_rgb", "hand_rgb"])
    other = tiny(views=["head_rgb"])
    batch = proc(other).collate([make_sample(other.config, 0)])
    with pytest.raises(SgvlaError, match="views"):
        model(**batch)
    with pytest.raises(SgvlaError, match="views"):
        proc(model).collate([make_sample(other.config, 0)])
    model.save_pretrained(tmp_path / "ckpt")
    wider = SGVLAConfig.from_preset("tiny", views=["head_rgb", "hand_rgb"], text_config={"hidden_size": 32})
    with pytest.raises(SgvlaError, match="does not fit|another shape"):
        load_model(tmp_path / "ckpt", config=wider)
    no_expert = SGVLAConfig.from_preset("tiny", views=["head_rgb", "hand_rgb"], use_flow_expert=False)
    with pytest.raises(SgvlaError, match="another shape"):
        load_model(tmp_path / "ckpt", config=no_expert)
    with pytest.raises(SgvlaError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(SgvlaError, match="labels"):
        model(**{k: v for k, v in make_batch(model).items() if k != "labels"})
    with pytest.raises(SgvlaError, match="compute"):
        model(**make_batch(model), compute=["depth"])


def test_model_builds_without_a_tokenizer(monkeypatch):
    """The model holds and builds no tokenizer: a config without action token ids gets the byte
    tokenizer's layout (what its processor then builds), fixed in the config; `from_pretrained` is
    transformers' own (strict loading is the `load_model` function)."""
    import transformers
    from transformers import PreTrainedTokenizerBase

    from sgvla.model import processing_sgvla

    def refuse(*args, **kwargs):
        raise AssertionError("the model built a tokenizer")

    monkeypatch.setattr(processing_sgvla, "build_byte_tokenizer", refuse)
    monkeypatch.setattr(transformers.Qwen2Tokenizer, "__init__", refuse)
    model = tiny(views=["head_rgb"])
    assert model.config.action_token_begin == processing_sgvla.byte_tokenizer_action_begin()
    assert not any(isinstance(v, (PreTrainedTokenizerBase, SGVLAProcessor)) for v in vars(model).values())
    assert "from_pretrained" not in vars(SGVLAForActionPrediction)
    monkeypatch.undo()
    assert proc(model).action_token_begin == model.config.action_token_begin


def test_auto_processor_round_trip_gives_the_same_inputs(tmp_path):
    """save_policy writes processor_config.json and the tokenizer next to the model and
    AutoProcessor returns an SGVLAProcessor that builds the same tensors; a folder saved without a
    processor (older runs) gets the same one from its config.json."""
    import json

    from transformers import AutoProcessor

    model = tiny(views=["head_rgb", "hand_depth"], history=1, token_chunk=2)
    processor = proc(model)
    save_policy(model, processor, tmp_path / "new")
    model.save_pretrained(tmp_path / "old")  # weights and config only
    doc = json.loads((tmp_path / "new" / "processor_config.json").read_text())
    assert doc["processor_class"] == "SGVLAProcessor" and doc["action_stats"] == STATS and doc["history"] == 1
    samples = [make_sample(model.config, i, text) for i, text in enumerate(["open the fridge", "Pick up X."])]
    obs = {**observation(3), "history": [observation(4)]}
    want, want_inputs = processor.collate(samples), processor(obs, "open the fridge")
    for folder in ("new", "old"):
        loaded = AutoProcessor.from_pretrained(tmp_path / folder)
        assert type(loaded) is SGVLAProcessor and loaded.to_dict() == processor.to_dict(), folder
        batch, inputs = loaded.collate(samples), loaded(obs, "open the fridge")
        for key in ("input_ids", "attention_mask", "labels", "action_chunk"):
            assert torch.equal(batch[key], want[key]), key
        assert torch.equal(inputs["input_ids"], want_inputs["input_ids"])
        for view in model.config.views:
            assert torch.equal(batch["pixel_values"][view], want["pixel_values"][view]), view
            assert torch.equal(inputs["pixel_values"][view], want_inputs["pixel_values"][view]), view
        np.testing.assert_array_equal(loaded.unnormalize(np.zeros((2, 13))), processor.unnormalize(np.zeros((2, 13))))


def test_strict_loading_refuses_a_bad_checkpoint_or_processor(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    model = tiny(views=["head_rgb"], aux_decoders=[], use_flow_expert=False)
    save_policy(model, proc(model), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(weights)
    del state[next(k for k in state if k.startswith("projector."))]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(SgvlaError, match="another shape.*missing_keys"):
        load_model(tmp_path / "ckpt")  # transformers alone would initialise it at random
    save_policy(model, proc(model), tmp_path / "ckpt")
    doc = json.loads((tmp_path / "ckpt" / "processor_config.json").read_text())
    (tmp_path / "ckpt" / "processor_config.json").write_text(json.dumps({**doc, "n_action_bins": 64}))
    with pytest.raises(SgvlaError, match="disagree on n_action_bins"):
        load_policy(tmp_path / "ckpt")


def test_load_components_uses_second_to_last_layer_features(tmp_path):
    from transformers import (
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    torch.manual_seed(0)
    # DINO made for 98 px (7x7 grid) is resampled to the model's 56 px once, at assembly.
    dino = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=98,
        num_register_tokens=4, layerscale_value=0.5))
    sig = SiglipVisionModel(SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                               num_attention_heads=2, patch_size=14, image_size=56))
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    dino.save_pretrained(tmp_path / "dino")
    sig.save_pretrained(tmp_path / "siglip")
    llm.save_pretrained(tmp_path / "llm")
    build_byte_tokenizer().save_pretrained(tmp_path / "llm")
    model, processor = load_components(dino=str(tmp_path / "dino"), siglip=str(tmp_path / "siglip"),
                                       llm=str(tmp_path / "llm"), image_size=56, views=["head_rgb"])
    begin = byte_tokenizer_action_begin()
    assert model.config.action_token_begin == begin and model.config.text_config.vocab_size >= begin + 255
    assert processor.action_token_begin == begin and processor.views == ["head_rgb"]
    x = normalize_for_towers(torch.rand(2, 3, 56, 56))
    with torch.no_grad():
        fused = model.vision(x["dino"], x["siglip"])
        want_d = dino(pixel_values=x["dino"], output_hidden_states=True).hidden_states[-2][:, 5:]
        want_s = sig(pixel_values=x["siglip"], output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(fused, torch.cat([want_d, want_s], dim=-1))
    assert torch.equal(model.llm.model.embed_tokens.weight[:320], llm.model.embed_tokens.weight)
    with pytest.raises(SgvlaError, match="expected"):
        load_components(dino=str(tmp_path / "llm"), siglip=str(tmp_path / "siglip"), llm=str(tmp_path / "llm"),
                        image_size=56)
    with pytest.raises(SgvlaError, match="cannot load"):
        load_components(dino=str(tmp_path / "nothing"), siglip=str(tmp_path / "siglip"),
                        llm=str(tmp_path / "llm"), image_size=56)


def test_a_dataset_frame_reaches_the_towers_equal_in_training_and_evaluation(tmp_path, monkeypatch):
    """One pixel path: a dataset row through training (dataset -> collate -> model) and its raw
    frames as an evaluation observation (processor -> model) reach the model as the same raw frames
    and give the towers bit-identical inputs, which are the float32 definition (/255 or Eq. 1,
    bicubic, normalisation) of the stored frames."""
    import pyarrow.parquet as pq

    from sgvla.dataset.schema import decode_png
    from sgvla.dataset.synthetic import write_synthetic_dataset
    from sgvla.dataset.torch_dataset import SgvlaTorchDataset
    from sgvla.transforms import depth_to_unit, unit_to_towers

    root = write_synthetic_dataset(tmp_path / "ds", "mini_kitchen", {"train": [4]}, episodes_per_shard=1)
    model = tiny(views=["head_rgb", "hand_depth"], history=1).eval()
    c, p = model.config, proc(model)
    ds = SgvlaTorchDataset(root, "mini_kitchen", views=c.views, history=c.history, chunk_size=c.chunk_size,
                           cache_dir=str(tmp_path / "cache"))
    rows = pq.read_table(sorted(root.glob("mini_kitchen/data/train-*.parquet"))).to_pydict()
    older, now = ({v: decode_png(rows[v][t]) for v in c.views} for t in (1, 2))  # row 2 and its history
    seen = []
    encode = model.encode_tower_inputs
    monkeypatch.setattr(model, "encode_tower_inputs", lambda d, s: seen.append((d, s)) or encode(d, s))
    train_px = p.collate([ds[2]])["pixel_values"]
    eval_px = p({**now, "history": [older]}, "open the fridge")["pixel_values"]
    assert all(torch.equal(train_px[v], eval_px[v]) for v in c.views)
    with torch.no_grad():
        model.encode_images(train_px)
        model.encode_images(eval_px)
    (train_dino, train_sig), (eval_dino, eval_sig) = seen
    assert torch.equal(train_dino, eval_dino) and torch.equal(train_sig, eval_sig)
    unit = [torch.from_numpy(f["head_rgb"]).movedim(-1, 0).float() / 255 for f in (older, now)]
    unit.insert(1, depth_to_unit(torch.from_numpy(older["hand_depth"].astype(np.int32))).expand(3, -1, -1))
    unit.append(depth_to_unit(torch.from_numpy(now["hand_depth"].astype(np.int32))).expand(3, -1, -1))
    want = unit_to_towers(torch.stack(unit)[None], c.image_size)
    assert torch.equal(train_dino, want["dino"]) and torch.equal(train_sig, want["siglip"])


def test_expected_token_decoding_weights_bin_centres_by_their_probabilities():
    model = tiny(use_flow_expert=False, n_action_bins=64).eval()
    p = proc(model)
    obs, text = observation(3), "close the drawer"
    inputs = p(obs, text)
    _, logits = model.decode_action_tokens(inputs["pixel_values"], inputs["input_ids"], return_logits=True)
    centres = model.action_tokenizer.decode(torch.arange(model.action_tokenizer.begin, model.action_tokenizer.end))
    want = p.unnormalize((logits[0].softmax(-1) @ centres).reshape(1, -1))
    got = model.predict_action(obs, text, mode="tokens", processor=p, token_decoding="expected")
    np.testing.assert_allclose(got.action, want[0], rtol=1e-5, atol=1e-6)
    greedy = model.predict_action(obs, text, mode="tokens", processor=p)  # the config's default: greedy
    np.testing.assert_allclose(greedy.action, p.unnormalize(centres[logits[0].argmax(-1)].reshape(1, -1))[0])
    assert not np.allclose(got.action, greedy.action)
    model.config.token_decoding = "expected"  # the saved setting is the default
    np.testing.assert_allclose(model.predict_action(obs, text, mode="tokens", processor=p).action, got.action)
    with pytest.raises(SgvlaError, match="token_decoding"):
        model.predict_action(obs, text, mode="tokens", processor=p, token_decoding="beam")
    with pytest.raises(SgvlaError, match="token_decoding"):
        SGVLAConfig.from_preset("tiny", token_decoding="sampled")


# -- crop augmentation ---------------------------------------------------------------------------

def test_crops_cut_each_cameras_views_and_its_mask_to_one_box():
    """A camera's RGB and depth views, all its history frames and its target mask are cut to the
    same box (so the mask decoder is asked for what the views show); boxes differ per sample."""
    from sgvla.transforms import CropBoxes, raw_to_unit

    g = np.random.default_rng(0)
    views = ["head_rgb", "head_depth", "hand_rgb"]
    masks = {cam: torch.as_tensor(g.random((3, 128, 128)) > 0.5) for cam in ("head", "hand")}
    # Each view shows its camera's mask: RGB 255 / depth 0 (bright) where it is set, 0 / 10 m elsewhere.
    frames = {"head_rgb": masks["head"][:, None, :, :, None].expand(3, 2, 128, 128, 3).to(torch.uint8) * 255,
              "head_depth": (~masks["head"])[:, None].expand(3, 2, 128, 128).to(torch.int32) * 10000,
              "hand_rgb": masks["hand"][:, None, :, :, None].expand(3, 2, 128, 128, 3).to(torch.uint8) * 255}
    torch.manual_seed(0)
    crops = CropBoxes.draw(3, ("head", "hand"), 0.8, random=True)
    assert len({tuple(c.tolist()) for c in crops.corners.flatten(1)}) == 3
    cut = crops.crop_views(raw_to_unit(frames, views), views)  # (3, 2 frames * 3 views, 3, h, w)
    assert cut.shape == (3, 6, 3, 114, 114)  # round(128 * sqrt(0.8))
    for cam, idx in (("head", [0, 1, 3, 4]), ("hand", [2, 5])):
        want = crops.crop_mask(masks[cam], cam)
        assert want.shape == (3, 128, 128) and want.dtype == torch.bool
        for j in idx:
            seen = torch.nn.functional.interpolate(cut[:, j, :1], size=(128, 128), mode="nearest")[:, 0] > 0.5
            assert torch.equal(seen, want), (cam, j)
    assert not torch.equal(crops.crop_mask(masks["head"], "head"), masks["head"])


def test_crop_area_draws_random_boxes_in_training_and_the_centre_otherwise():
    from sgvla.transforms import CropBoxes, raw_to_towers

    model = tiny(crop_area=0.81)
    batch = make_batch(model, n=2)
    model.eval()
    centre = CropBoxes.draw(2, ("head", "hand"), 0.81, random=False)
    assert torch.allclose(centre.corners, torch.full((2, 2, 2), 0.05))
    with torch.no_grad():
        towers = raw_to_towers(batch["pixel_values"], model.config.views, 56, centre)
        assert torch.equal(model.encode_images(batch["pixel_values"]),
                           model.encode_tower_inputs(towers["dino"], towers["siglip"]))
        assert not torch.equal(model.encode_images(batch["pixel_values"]),
                               tiny().encode_images(batch["pixel_values"]))
    model.train()

    def loss(seed: int) -> float:
        torch.manual_seed(seed)
        with torch.no_grad():
            return float(model(**batch, compute=["action", "mask"]).loss)

    assert loss(0) == loss(0) != loss(1)  # the training RNG (which checkpoints save) picks the boxes
