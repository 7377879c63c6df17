"""`sgvla import-minivla`: a tiny random checkpoint in Prismatic's layout (timm towers, fused GELU MLP
projector, HF Qwen2) becomes an SG-VLA model with the same features and logits.

timm cannot be imported here, so the towers' reference is written below from timm's ViT structure:
conv patch embedding, DINOv2-reg's `no_embed_class` positions (patches only, then CLS and registers
in front), pre-norm blocks with a fused qkv projection whose output rows are [q; k; v], layer scale,
exact GELU, and Prismatic's features = the second-to-last block's output without the final norm and
without the prefix tokens. The LLM reference is transformers' Qwen2 with the checkpoint's own
`llm_backbone` state dict and Prismatic's sequence (image patches after the first text token).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM
from typer.testing import CliRunner

from sgvla.cli import app
from sgvla.errors import SgvlaError
from sgvla.model import ActionTokenizer, SGVLAConfig
from sgvla.model.import_minivla import MINIVLA_EXTRA_TOKENS, import_minivla_model

PATCH, IMAGE, GRID = 14, 56, 4  # the tiny preset: 56 px, 4 x 4 patches
DINO = dict(dim=32, depth=3, heads=2, mlp=64, regs=4)
SIGLIP = dict(dim=48, depth=3, heads=2, mlp=96, regs=0)
VIEWS = ["head_rgb"]


# -- a tiny checkpoint in Prismatic's layout -----------------------------------------------------

def _rand(g: torch.Generator | None, *shape: int, scale: float = 0.1, offset: float = 0.0) -> torch.Tensor:
    """Random values; with no generator, an uninitialised tensor (shapes only, e.g. on the meta device)."""
    if g is None:
        return torch.empty(*shape)
    return torch.randn(*shape, generator=g) * scale + offset


def timm_vit(g: torch.Generator | None, dim: int, depth: int, heads: int, mlp: int, regs: int, grid: int = GRID,
             cls: bool = True, layer_scale: bool = True, pool_head: bool = False) -> dict[str, torch.Tensor]:
    """A timm VisionTransformer state dict (names as timm saves them)."""
    sd = {"pos_embed": _rand(g, 1, grid * grid, dim, scale=0.5),
          "patch_embed.proj.weight": _rand(g, dim, 3, PATCH, PATCH, scale=0.02), "patch_embed.proj.bias": _rand(g, dim)}
    if cls:
        sd["cls_token"] = _rand(g, 1, 1, dim, scale=0.5)
    if regs:
        sd["reg_token"] = _rand(g, 1, regs, dim, scale=0.5)
    for i in range(depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd[b + norm + ".weight"], sd[b + norm + ".bias"] = _rand(g, dim, offset=1.0), _rand(g, dim)
        shapes = {"attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim), "mlp.fc1": (mlp, dim), "mlp.fc2": (dim, mlp)}
        for name, (o, n) in shapes.items():
            sd[b + name + ".weight"], sd[b + name + ".bias"] = _rand(g, o, n, scale=n**-0.5), _rand(g, o)
        if layer_scale:
            sd[b + "ls1.gamma"], sd[b + "ls2.gamma"] = _rand(g, dim, scale=0.5), _rand(g, dim, scale=0.5)
    sd["norm.weight"], sd["norm.bias"] = _rand(g, dim, offset=1.0), _rand(g, dim)
    if pool_head:  # SigLIP's MAP head (unused by Prismatic)
        sd.update({"attn_pool.latent": _rand(g, 1, 1, dim), "attn_pool.q.weight": _rand(g, dim, dim),
                   "attn_pool.kv.weight": _rand(g, 2 * dim, dim), "attn_pool.norm.weight": _rand(g, dim)})
    return sd


def qwen_config(vocab: int = 640, preset: str = "tiny") -> Qwen2Config:
    text = SGVLAConfig.from_preset(preset).text_config.to_dict()
    text["vocab_size"] = vocab
    return Qwen2Config(**{k: v for k, v in text.items() if k not in ("model_type", "transformers_version")})


def prismatic_checkpoint(seed: int = 0, dino_depth: int = DINO["depth"], vision: bool = True) -> dict:
    """{"model": {...}} as openvla-mini's FSDPStrategy.save_checkpoint writes it."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(qwen_config())
    fused = DINO["dim"] + SIGLIP["dim"]
    projector = {}
    for i, (o, n) in zip((0, 2, 4), ((4 * fused, fused), (64, 4 * fused), (64, 64)), strict=True):
        projector[f"projector.{i}.weight"] = _rand(g, o, n, scale=n**-0.5)
        projector[f"projector.{i}.bias"] = _rand(g, o)
    model = {"projector": projector,
             "llm_backbone": {f"llm.{k}": v.detach().clone() for k, v in llm.state_dict().items()}}
    if vision:
        dino = timm_vit(g, **{**DINO, "depth": dino_depth})
        siglip = timm_vit(g, **SIGLIP, cls=False, layer_scale=False, pool_head=True)
        model["vision_backbone"] = {**{f"dino_featurizer.{k}": v for k, v in dino.items()},
                                    **{f"siglip_featurizer.{k}": v for k, v in siglip.items()}}
    return {"model": model}


def write_run(folder, ckpt: dict) -> None:
    """A Prismatic run folder: config.json + checkpoints/latest-checkpoint.pt."""
    import json

    (folder / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, folder / "checkpoints" / "latest-checkpoint.pt")
    (folder / "config.json").write_text(json.dumps({"model": {
        "model_id": "prism-qwen25-extra-dinosiglip-224px+0_5b", "vision_backbone_id": "dinosiglip-vit-so-224px",
        "arch_specifier": "no-align+fused-gelu-mlp", "llm_backbone_id": "qwen25-0_5b-extra"}}))


# -- references written from timm's / Prismatic's structure -------------------------------------

def ref_block(x: torch.Tensor, sd: dict, p: str, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    h = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
    qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(b, n, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    att = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1) @ v
    att = F.linear(att.transpose(1, 2).reshape(b, n, c), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    x = x + att * sd.get(p + "ls1.gamma", 1.0)
    h = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
    h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"],
                 sd[p + "mlp.fc2.bias"])
    return x + h * sd.get(p + "ls2.gamma", 1.0)


def ref_features(sd: dict, prefix: str, pixels: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """timm `get_intermediate_layers(n={depth - 2})` as Prismatic calls it: patch tokens after block depth-2."""
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    x = F.conv2d(pixels, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"]  # no_embed_class: positions for patches only
    front = [sd[k].expand(x.shape[0], -1, -1) for k in ("cls_token", "reg_token") if k in sd]
    x = torch.cat([*front, x], dim=1)
    for i in range(depth - 1):
        x = ref_block(x, sd, f"blocks.{i}.", heads)
    return x[:, sum(t.shape[1] for t in front):]


def ref_projector(sd: dict, x: torch.Tensor) -> torch.Tensor:
    for i in (0, 2, 4):
        x = F.linear(x, sd[f"projector.projector.{i}.weight"], sd[f"projector.projector.{i}.bias"])
        x = F.gelu(x) if i < 4 else x
    return x


def flat_model(ckpt: dict) -> dict:
    return {f"{part}.{k}": v for part, sd in ckpt["model"].items() for k, v in sd.items()}


def ref_logits(ckpt: dict, dino_px: torch.Tensor, sig_px: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """PrismaticVLM.forward: projected patches after the first text token, through HF Qwen2."""
    flat = flat_model(ckpt)
    feats = torch.cat([ref_features(flat, "vision_backbone.dino_featurizer.", dino_px, DINO["heads"], DINO["depth"]),
                       ref_features(flat, "vision_backbone.siglip_featurizer.", sig_px, SIGLIP["heads"],
                                    SIGLIP["depth"])], dim=2)
    llm = Qwen2ForCausalLM(qwen_config()).eval()
    llm.load_state_dict({k[len("llm."):]: v for k, v in ckpt["model"]["llm_backbone"].items()}, strict=True)
    emb = llm.get_input_embeddings()(ids)
    embeds = torch.cat([emb[:, :1], ref_projector(flat, feats), emb[:, 1:]], dim=1)
    return llm(inputs_embeds=embeds).logits


def sgvla_logits(model, dino_px: torch.Tensor, sig_px: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    images = model.encode_tower_inputs(dino_px.unsqueeze(1), sig_px.unsqueeze(1))
    embeds, attn, _ = model._assemble(ids, None, images)
    return model.llm(inputs_embeds=embeds, attention_mask=attn).logits


def pixels(seed: int = 1, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, IMAGE, IMAGE, generator=g), torch.randn(n, 3, IMAGE, IMAGE, generator=g)


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prismatic") / "run"
    ckpt = prismatic_checkpoint()
    write_run(folder, ckpt)
    return folder, ckpt


@pytest.fixture(scope="module")
def imported(run_dir):
    folder, ckpt = run_dir
    model, processor, report = import_minivla_model(folder, preset="tiny", overrides={"views": VIEWS},
                                                    tokenizer="byte")
    return model.eval(), processor, report, ckpt


# -- (a) every key mapped -----------------------------------------------------------------------

def test_every_checkpoint_tensor_is_mapped_or_dropped_for_a_stated_reason(imported):
    model, _, report, ckpt = imported
    source = set(flat_model(ckpt))
    assert set(report.mapped) | set(report.dropped) == source
    assert not set(report.mapped) & set(report.dropped)
    last = {f"vision_backbone.{t}_featurizer.blocks.2." for t in ("dino", "siglip")}
    for key, why in report.dropped.items():
        expected = (key.startswith(tuple(last)) or ".norm." in key or "attn_pool." in key
                    or key == "llm_backbone.llm.lm_head.weight")
        assert expected, (key, why)
    targets = [t for ts in report.mapped.values() for t in ts]
    assert len(targets) == len(set(targets))
    # Everything the checkpoint cannot provide is SG-VLA's own (or DINO's unused mask token / tied head).
    own = ("aux.", "expert.", "vision.dino.embeddings.mask_token", "llm.lm_head.weight")
    assert report.fresh and all(k.startswith(own) for k in report.fresh), report.fresh
    assert set(targets) | set(report.fresh) == set(model.state_dict())
    assert model.llm.lm_head.weight.data_ptr() == model.llm.model.embed_tokens.weight.data_ptr()
    assert model.config.siglip_config.hidden_act == "gelu"  # timm's SigLIP uses exact GELU


# -- (b) tower features -------------------------------------------------------------------------

@torch.no_grad()
def test_tower_features_equal_timm_reference_forward(imported):
    model, _, _, ckpt = imported
    flat = flat_model(ckpt)
    dino_px, sig_px = pixels()
    ref_dino = ref_features(flat, "vision_backbone.dino_featurizer.", dino_px, DINO["heads"], DINO["depth"])
    ref_sig = ref_features(flat, "vision_backbone.siglip_featurizer.", sig_px, SIGLIP["heads"], SIGLIP["depth"])
    assert ref_dino.shape == (2, GRID * GRID, DINO["dim"]) and ref_sig.shape == (2, GRID * GRID, SIGLIP["dim"])
    fused = model.vision(dino_px, sig_px)
    torch.testing.assert_close(fused[..., :DINO["dim"]], ref_dino, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused[..., DINO["dim"]:], ref_sig, rtol=1e-4, atol=1e-5)
    # The check has teeth: the last block (dropped) or a missing layer scale changes the features.
    wrong = ref_features(flat, "vision_backbone.dino_featurizer.", dino_px, DINO["heads"], DINO["depth"] + 1)
    assert (wrong - ref_dino).abs().max() > 1e-2


# -- (c) projector and logits -------------------------------------------------------------------

@torch.no_grad()
def test_projector_and_llm_logits_equal_prismatic_reference(imported):
    model, processor, _, ckpt = imported
    dino_px, sig_px = pixels(seed=2)
    feats = model.vision(dino_px, sig_px)
    torch.testing.assert_close(model.projector(feats), ref_projector(flat_model(ckpt), feats), rtol=1e-5, atol=1e-6)
    ids = torch.tensor([processor.prompt_ids("pick up the bowl")] * 2)
    ours, ref = sgvla_logits(model, dino_px, sig_px, ids), ref_logits(ckpt, dino_px, sig_px, ids)
    assert ours.shape == ref.shape == (2, ids.shape[1] + GRID * GRID, 640)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_tokenizer_gets_minivlas_256_extra_tokens(imported):
    model, processor, _, _ = imported
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids([f"<|extra_{i}|>" for i in range(MINIVLA_EXTRA_TOKENS)])
    assert ids == list(range(ids[0], ids[0] + MINIVLA_EXTRA_TOKENS)) and ids[-1] == len(tok) - 1
    assert model.config.action_token_begin == ids[0]
    assert model.config.built_from["minivla"].endswith("latest-checkpoint.pt")


# -- a base VLM without vision_backbone + timm's tower files -----------------------------------

def resampled(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """timm's load-time resampling of a patch-position grid (bicubic, antialiased)."""
    side = int(pos.shape[1] ** 0.5)
    x = F.interpolate(pos.reshape(1, side, side, -1).permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic",
                      antialias=True)
    return x.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)


@torch.no_grad()
def test_base_vlm_takes_timm_tower_files_with_the_dino_grid_resampled(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    dino = timm_vit(g, **DINO, grid=6)  # timm's release is made for another size (518 px: 37 x 37)
    siglip = timm_vit(g, **SIGLIP, cls=False, layer_scale=False, pool_head=True)
    save_file(dino, tmp_path / "dino.safetensors")
    openclip = {f"visual.trunk.{k}": v for k, v in siglip.items()} | {"text.token_embedding.weight": torch.zeros(3, 2)}
    torch.save({"state_dict": openclip}, tmp_path / "open_clip_pytorch_model.bin")
    ckpt = prismatic_checkpoint(seed=3, vision=False)
    llm = ckpt["model"]["llm_backbone"]  # as saved through an activation-checkpointing wrapper
    ckpt["model"]["llm_backbone"] = {k.replace("layers.0.", "layers.0._checkpoint_wrapped_module."): v
                                     for k, v in llm.items()}
    write_run(tmp_path / "run", ckpt)
    model, _, report = import_minivla_model(tmp_path / "run", preset="tiny", overrides={"views": VIEWS},
                                            tokenizer="byte", dino=tmp_path / "dino.safetensors", siglip=tmp_path)
    assert any("6x6 positions resampled to 4x4" in n for n in report.notes)
    assert "llm_backbone.llm.model.layers.0.self_attn.q_proj.weight" in report.mapped
    dino_px, sig_px = pixels(seed=4)
    expect_dino = ref_features({**dino, "pos_embed": resampled(dino["pos_embed"], GRID)}, "", dino_px,
                               DINO["heads"], DINO["depth"])
    fused = model.eval().vision(dino_px, sig_px)
    torch.testing.assert_close(fused[..., :DINO["dim"]], expect_dino, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused[..., DINO["dim"]:], ref_features(siglip, "", sig_px, SIGLIP["heads"],
                                                                      SIGLIP["depth"]), rtol=1e-4, atol=1e-5)


# -- (d) the command ------------------------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(app, ["import-minivla", *args])


def one_error_line(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output and all(n in lines[0] for n in needles), res.output


def test_command_writes_a_folder_that_loads_with_the_same_logits(run_dir, imported, tmp_path):
    from sgvla.model import load_policy

    folder, ckpt = run_dir
    out, train_yaml = tmp_path / "base-vlm", tmp_path / "run.yaml"
    train_yaml.write_text("model:\n  preset: tiny\n  views: [head_rgb]\n")  # the model section of a run
    res = invoke(str(folder), str(out), "--config", str(train_yaml), "--tokenizer", "byte")
    assert res.exit_code == 0, res.output
    assert "mapped" in res.output and "wrote" in res.output
    model, processor = load_policy(out)
    assert model.config.views == VIEWS and model.config.built_from["minivla"].endswith("latest-checkpoint.pt")
    dino_px, sig_px = pixels(seed=6, n=1)
    ids = torch.tensor([processor.prompt_ids("open the fridge")])
    with torch.no_grad():
        torch.testing.assert_close(sgvla_logits(model.eval(), dino_px, sig_px, ids),
                                   ref_logits(ckpt, dino_px, sig_px, ids), rtol=1e-4, atol=1e-4)
    one_error_line(invoke(str(folder), str(out), "--config", str(train_yaml), "--tokenizer", "byte"), "--overwrite")


def test_command_refuses_bad_inputs_in_one_line(tmp_path):
    one_error_line(invoke(str(tmp_path / "nope"), str(tmp_path / "o")), "does not exist")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    one_error_line(invoke(str(tmp_path / "other.pt"), str(tmp_path / "o"), "--preset", "tiny", "--tokenizer", "byte"),
                   "not a Prismatic checkpoint")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    one_error_line(invoke(str(tmp_path / "junk.pt"), str(tmp_path / "o")), "not a readable")
    torch.save(prismatic_checkpoint(dino_depth=4), tmp_path / "deep.pt")
    one_error_line(invoke(str(tmp_path / "deep.pt"), str(tmp_path / "o"), "--preset", "tiny", "--tokenizer", "byte"),
                   "DINOv2 tower", "4 blocks")
    torch.save(prismatic_checkpoint(vision=False), tmp_path / "base.pt")
    one_error_line(invoke(str(tmp_path / "base.pt"), str(tmp_path / "o"), "--preset", "tiny", "--tokenizer", "byte"),
                   "--dino")
    assert not (tmp_path / "o").exists()


def test_a_missing_projector_layer_names_the_file_and_the_tensor(tmp_path):
    ckpt = prismatic_checkpoint()
    del ckpt["model"]["projector"]["projector.4.bias"]
    torch.save(ckpt, tmp_path / "cut.pt")
    with pytest.raises(SgvlaError, match=r"cut\.pt does not fit the model \(1 missing tensors: projector\.net\.4\.b"):
        import_minivla_model(tmp_path / "cut.pt", preset="tiny", tokenizer="byte")


def test_real_minivla_shapes_fit_the_sgvla_1_3b_preset():
    """Key names and shapes at the real sizes (on the meta device: no memory, no download): timm's
    ViT-L/14-reg4 release (37 x 37 positions), SigLIP So400m/14 at 224 px, the 2176 -> 8704 -> 896 -> 896
    projector and Qwen2.5-0.5B with 151936 rows, against the sgvla-1.3b preset."""
    from sgvla.model import SGVLAForActionPrediction
    from sgvla.model.import_minivla import ImportReport, _config, map_checkpoint

    with torch.device("meta"):
        dino = timm_vit(None, dim=1024, depth=24, heads=16, mlp=4096, regs=4, grid=37)
        siglip = timm_vit(None, dim=1152, depth=27, heads=16, mlp=4304, regs=0, cls=False, layer_scale=False,
                          pool_head=True)
        llm = Qwen2ForCausalLM(qwen_config(151936, "sgvla-1.3b"))
        flat = {**{f"vision_backbone.dino_featurizer.{k}": v for k, v in dino.items()},
                **{f"vision_backbone.siglip_featurizer.{k}": v for k, v in siglip.items()},
                **{f"llm_backbone.llm.{k}": v for k, v in llm.state_dict().items()}}
        for i, (o, n) in zip((0, 2, 4), ((8704, 2176), (896, 8704), (896, 896)), strict=True):
            flat[f"projector.projector.{i}.weight"] = torch.empty(o, n)
            flat[f"projector.projector.{i}.bias"] = torch.empty(o)
        config = _config("sgvla-1.3b", {}, flat, 151665, "sgvla", {"minivla": "meta"})
        model = SGVLAForActionPrediction(config)
        report = ImportReport("meta")
        state = map_checkpoint(flat, config, model, report)
    assert set(report.mapped) | set(report.dropped) == set(flat)
    assert state["vision.dino.embeddings.position_embeddings"].shape == (1, 257, 1024)
    assert sum(k.startswith("vision_backbone.dino_featurizer.blocks.23.") for k in report.dropped) == 14
    assert sum(k.startswith("vision_backbone.siglip_featurizer.blocks.26.") for k in report.dropped) == 12
    assert any("37x37 positions resampled to 16x16" in n for n in report.notes)
    assert config.text_config.vocab_size == 151936 and config.action_token_begin + 256 == 151921


# -- MiniVLA's action tokens ----------------------------------------------------------------------

def minivla_reference(actions: np.ndarray, vocab_len: int) -> tuple[np.ndarray, np.ndarray]:
    """openvla-mini's ActionTokenizer (256 bins, use_extra): ids = len - digitize(clip(a), linspace(-1, 1, 256));
    decoded = bin_centers[clip(len - id - 1, 0, 254)]."""
    edges = np.linspace(-1, 1, 256)
    centres = (edges[:-1] + edges[1:]) / 2.0
    ids = vocab_len - np.digitize(np.clip(actions, -1.0, 1.0), edges)
    return ids, centres[np.clip(vocab_len - ids - 1, 0, 254)]


def test_minivla_layout_matches_openvla_mini_action_tokenizer():
    begin = 151665  # <|extra_0|> after Qwen2.5's 151665 tokens; MiniVLA's len(tokenizer) is 151921
    tok = ActionTokenizer(begin, n_bins=255, layout="minivla")
    edges = np.linspace(-1, 1, 256)
    a = np.concatenate([np.linspace(-1.2, 1.2, 20001), edges, np.nextafter(edges, 2), np.nextafter(edges, -2),
                        [0.0, -0.0, 1.0, -1.0]]).astype(np.float32)
    ref_ids, ref_actions = minivla_reference(a, begin + MINIVLA_EXTRA_TOKENS)
    ids = tok.encode(a)
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    np.testing.assert_array_equal(tok.decode(ids).numpy(), ref_actions.astype(np.float32))
    assert (tok.begin, tok.end) == (151665, 151921) and int(tok.encode(np.float32([1.0]))[0]) == begin
    assert tok.decode(tok.encode(np.zeros(3))).abs().max().item() == 0.0  # 0 is one of MiniVLA's centres too
    with pytest.raises(SgvlaError):
        tok.decode(torch.tensor([begin - 1]))


def test_default_layout_is_unchanged():
    tok = ActionTokenizer(259, 255)
    a = torch.linspace(-1.1, 1.1, 5001)
    old = (torch.floor((a.double() + 1.0) / (2 / 255)).long().clamp(0, 254)) + 259
    assert torch.equal(tok.encode(a), old) and (tok.begin, tok.end, tok.n_tokens) == (259, 514, 255)
    with pytest.raises(SgvlaError, match="layout"):
        ActionTokenizer(0, 255, layout="openvla")
    with pytest.raises(SgvlaError, match="action_token_layout"):
        SGVLAConfig.from_preset("tiny", action_token_layout="openvla")


def test_minivla_layout_import_is_honoured(run_dir):
    """The model and processor both decode an imported checkpoint's actions in MiniVLA's layout."""
    folder, _ = run_dir
    model, processor, _ = import_minivla_model(folder, preset="tiny", tokenizer="byte", action_token_layout="minivla")
    assert model.action_tokenizer.layout == processor.action_tokenizer.layout == "minivla"
    assert model.action_tokenizer.end == processor.action_tokenizer.end == model.action_tokenizer.begin + 256
