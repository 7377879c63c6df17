"""Import MiniVLA's pretrained base VLM (a Prismatic checkpoint) as an SG-VLA model.

The paper fine-tunes MiniVLA's vision-language-aligned base VLM
(`prism-qwen25-extra-dinosiglip-224px+0_5b`), not separately pretrained towers with a random
projector. Prismatic (openvla-mini) saves a run folder with `config.json` and
`checkpoints/*.pt` = `{"model": {"projector": sd, "llm_backbone": sd[, "vision_backbone": sd]}}`:
only the trained parts, so the base VLM (towers frozen in its training) has no `vision_backbone`
and its towers are timm's released weights, given here with `dino=` / `siglip=`; a VLA trained
end to end has all three. A `.safetensors` file with the same keys flattened
(`projector.projector.0.weight`, ...) is read too.

Key mapping (timm / Prismatic -> SG-VLA's transformers towers, see `sgvla.model.vision`):

* DINOv2-reg (`dino_featurizer.`, timm `no_embed_class`): `cls_token`, `reg_token` ->
  `register_tokens`, `pos_embed` (patches only) -> `position_embeddings` with a zero row in front for
  CLS (timm already folded CLS's position into `cls_token`), resampled to the model's grid the
  way timm does at load time (bicubic, antialiased) when the file has another grid (timm's 518 px
  release); fused `attn.qkv` rows [q; k; v] -> `q_proj`/`k_proj`/`v_proj`; `ls1.gamma`/`ls2.gamma`
  -> `layer_scale1/2.lambda1`.
* SigLIP (`siglip_featurizer.`, no prefix tokens): `pos_embed` -> `position_embedding.weight`,
  `norm1/2` -> `layer_norm1/2`, `attn.proj` -> `out_proj`. timm builds this tower with exact
  GELU, so the imported SigLIP config uses `hidden_act="gelu"` (Google's `gelu_pytorch_tanh` would
  change every feature).
* Prismatic reads each tower's second-to-last block output without the final norm; SG-VLA's towers
  stop there, so the last block, `norm` and SigLIP's `attn_pool` head are dropped (and reported).
* Projector `projector.{0,2,4}` -> `projector.net.{0,2,4}`; LLM `llm.*` keys are already
  transformers' Qwen2 keys (the tied `lm_head` is checked equal to the embeddings and not stored
  twice). The embedding rows (Qwen2.5's 151936, which already hold the 256 `<|extra_i|>` rows
  MiniVLA added) set the LLM vocabulary; the tokenizer gets the same 256 extra tokens.

SG-VLA's own parts (auxiliary decoders, flow expert) start random; DINO's unused mask token is 0.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sgvla.errors import SgvlaError, load_json
from sgvla.model.configuration_sgvla import HUB_COMPONENTS, SGVLAConfig

#: Extra tokens MiniVLA's `qwen25-0_5b-extra` LLM adds to the Qwen2.5 tokenizer (`<|extra_i|>`).
MINIVLA_EXTRA_TOKENS = 256
#: The Prismatic vision backbone this importer maps (timm DINOv2-reg L/14 + SigLIP So400m/14, 224 px).
VISION_BACKBONE_ID = "dinosiglip-vit-so-224px"
TOWER_FILES = ("model.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")

_DINO_BLOCK = {"norm1": "norm1", "attn.proj": "attention.o_proj", "ls1.gamma": "layer_scale1.lambda1",
               "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "ls2.gamma": "layer_scale2.lambda1"}
_DINO_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
_SIGLIP_BLOCK = {"norm1": "layer_norm1", "attn.proj": "self_attn.out_proj", "norm2": "layer_norm2",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_SIGLIP_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_LAST_BLOCK = "last block: Prismatic's features are the second-to-last block's output"
_TOWER_EXTRAS = {"norm.": "final norm: Prismatic's features skip it",
                 "attn_pool.": "SigLIP's attention-pooling head: not part of the patch features",
                 "fc_norm.": "classifier norm: not part of the patch features",
                 "head.": "classifier head: not part of the patch features"}


@dataclass
class ImportReport:
    """Where every checkpoint tensor went: `mapped` (source key -> SG-VLA keys), `dropped` (source
    key -> why it is not needed), `fresh` (SG-VLA keys the checkpoint does not provide)."""

    source: str
    mapped: dict[str, list[str]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = sorted({k.split(".")[0] for k in self.mapped})
        fresh = sorted({k.split(".")[0] if k.startswith(("aux.", "expert.")) else k for k in self.fresh})
        why = sorted(set(self.dropped.values()))
        lines = [f"{len(self.mapped)} tensors of {self.source} mapped ({', '.join(parts)}); "
                 f"{len(self.dropped)} not needed ({'; '.join(why) or 'none'}); "
                 f"{len(self.fresh)} not in it ({', '.join(fresh) or 'none'})", *self.notes]
        return "\n".join(lines)


class _KeyMap:
    """The SG-VLA state being filled from a flat source dict, with the bookkeeping for the report."""

    def __init__(self, source: Mapping[str, torch.Tensor], report: ImportReport):
        self.src, self.report = source, report
        self.out: dict[str, torch.Tensor] = {}

    def put(self, key: str, targets: Mapping[str, torch.Tensor]) -> None:
        self.out.update(targets)
        self.report.mapped[key] = list(targets)

    def rename(self, key: str, target: str) -> None:
        self.put(key, {target: self.src[key]})

    def drop(self, key: str, why: str) -> None:
        self.report.dropped[key] = why

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.src if k.startswith(prefix)]

    def leftovers(self) -> list[str]:
        return [k for k in self.src if k not in self.report.mapped and k not in self.report.dropped]


# -- reading files ------------------------------------------------------------------------------

def find_checkpoint(path: Path) -> Path:
    """The .pt/.safetensors file of a Prismatic run folder, its `checkpoints/` folder or the file
    itself (`latest-checkpoint.pt`, else the newest `step-*.pt`)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise SgvlaError(f"{path} does not exist: give a Prismatic run folder (config.json + checkpoints/) or "
                         "its checkpoints/*.pt file")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = folder / "latest-checkpoint.pt"
    if latest.is_file():
        return latest
    steps = sorted(folder.glob("step-*.pt")) + sorted(folder.glob("*.safetensors"))
    if not steps:
        raise SgvlaError(f"{path} holds no Prismatic checkpoint (checkpoints/latest-checkpoint.pt or step-*.pt): "
                         "give MiniVLA's run folder or the .pt file itself")
    return steps[-1]


def _load_file(path: Path, what: str) -> Any:
    """A safetensors or torch (zip) file, tensors only (nothing arbitrary is unpickled), on the CPU;
    torch files are memory-mapped, so a 2.5 GB checkpoint is not read twice into memory."""
    if not path.is_file():
        raise SgvlaError(f"{what} {path} does not exist: check the path")
    unreadable = f"{what} {path} is not a readable torch (zip) or safetensors file"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for torn headers
            raise SgvlaError(f"{unreadable} ({str(e).splitlines()[0][:160]}): download it again") from None
    if not zipfile.is_zipfile(path):
        raise SgvlaError(f"{unreadable}: download it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        name = re.search(r"GLOBAL (\S+)", str(e))
        raise SgvlaError(f"{what} {path} holds {name.group(1) if name else 'objects other than tensors'}, which is "
                         "never unpickled: give a checkpoint of plain state dicts") from None
    except (RuntimeError, OSError, EOFError) as e:
        raise SgvlaError(f"{unreadable} ({str(e).splitlines()[0][:160]}): download it again") from None


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(key)] = value
        elif isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
    return out


def read_prismatic(path: Path) -> dict[str, torch.Tensor]:
    """Flat `part.key` tensors of a Prismatic checkpoint (parts: vision_backbone, projector, llm_backbone)."""
    obj = _load_file(path, "checkpoint")
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        flat = _flatten(obj["model"])
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        flat = dict(obj)  # safetensors: the same keys, flattened
    else:
        flat = {}
    # Wrapper prefixes FSDP / activation checkpointing may leave in a state dict saved without their hooks.
    flat = {re.sub(r"_(fsdp|checkpoint)_wrapped_module\.", "", k): v for k, v in flat.items()}
    parts = {k.split(".")[0] for k in flat}
    if not {"projector", "llm_backbone"} <= parts:
        found = sorted(parts or (obj.keys() if isinstance(obj, Mapping) else [type(obj).__name__]))[:6]
        raise SgvlaError(f"{path} is not a Prismatic checkpoint: it needs {{'model': {{'projector', 'llm_backbone'"
                         f"[, 'vision_backbone']}}}} and has {found}; give MiniVLA's checkpoints/*.pt")
    return flat


def read_tower(path: Path, what: str) -> dict[str, torch.Tensor]:
    """timm ViT weights (a file, or a folder with one of `TOWER_FILES`); OpenCLIP files keep their
    `visual.trunk.` (the timm tower), as timm's own loader does."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in TOWER_FILES if (path / n).is_file()]
        if not found:
            raise SgvlaError(f"{what} folder {path} has none of {', '.join(TOWER_FILES)}: download timm's weights")
        path = found[0]
    obj = _load_file(path, f"{what} weights")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    flat = _flatten(obj) if isinstance(obj, Mapping) else {}
    trunk = "visual.trunk."
    if any(k.startswith(trunk) for k in flat):
        flat = {k[len(trunk):]: v for k, v in flat.items() if k.startswith(trunk)}
    if "register_tokens" in flat or "mask_token" in flat:
        raise SgvlaError(f"{what} weights {path} are in Meta's original DINOv2 layout: use timm's release "
                         "(Hub repo timm/vit_large_patch14_reg4_dinov2.lvd142m)")
    if "patch_embed.proj.weight" not in flat:
        raise SgvlaError(f"{what} weights {path} are not a timm ViT (no patch_embed.proj.weight): give timm's weights")
    return flat


def check_run_config(checkpoint: Path) -> list[str]:
    """Refuse a Prismatic run whose config.json names another architecture; notes for the report."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    cfg_file = run / "config.json"
    if not cfg_file.is_file():
        return [f"no {cfg_file}: the architecture is checked from the tensors alone"]
    model = load_json(cfg_file, "download the run folder again").get("model")
    if not isinstance(model, Mapping):
        return [f"{cfg_file} has no 'model' section (a VLA run): the architecture is checked from the tensors alone"]
    wrong = []
    if model.get("vision_backbone_id", VISION_BACKBONE_ID) != VISION_BACKBONE_ID:
        wrong.append(f"vision_backbone_id={model['vision_backbone_id']!r}")
    if not str(model.get("arch_specifier", "fused-gelu-mlp")).endswith("fused-gelu-mlp"):
        wrong.append(f"arch_specifier={model['arch_specifier']!r}")
    if not str(model.get("llm_backbone_id", "qwen25")).startswith("qwen25"):
        wrong.append(f"llm_backbone_id={model['llm_backbone_id']!r}")
    if wrong:
        raise SgvlaError(f"{cfg_file} describes {', '.join(wrong)}: only {VISION_BACKBONE_ID} towers with the "
                         "fused GELU MLP projector and a Qwen2.5 LLM (MiniVLA's base VLM) can be imported")
    return [f"{cfg_file}: model {model.get('model_id', '?')}"]


# -- the mapping --------------------------------------------------------------------------------

def _grid_positions(pos: torch.Tensor, grid: int, where: str, notes: list[str]) -> torch.Tensor:
    """(1, N, C) patch position table on a `grid` x `grid` grid, resampled like timm at load time."""
    side = math.isqrt(pos.shape[1])
    if pos.ndim != 3 or side * side != pos.shape[1]:
        raise SgvlaError(f"{where} has shape {tuple(pos.shape)}, not a square grid of patch positions: give "
                         "timm's weights of this tower")
    if side == grid:
        return pos
    notes.append(f"{where}: {side}x{side} positions resampled to {grid}x{grid} (bicubic, antialiased, as timm)")
    x = pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True)
    return x.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)


def _tower_depth(km: _KeyMap, prefix: str) -> int:
    idx = [int(m.group(1)) for k in km.keys(prefix + "blocks.") if (m := re.match(r"(\d+)\.", k[len(prefix) + 7:]))]
    return max(idx) + 1 if idx else 0


def _map_blocks(km: _KeyMap, src: str, dst: str, depth: int, names: Mapping[str, str], qkv: tuple[str, ...]) -> None:
    """timm `blocks.i.*` -> transformers layers `dst.i.*`; the last block is dropped."""
    for key in km.keys(src + "blocks."):
        idx, _, rest = key[len(src) + 7:].partition(".")
        i = int(idx)
        if i == depth - 1:
            km.drop(key, _LAST_BLOCK)
        elif rest.startswith("attn.qkv.") and km.src[key].shape[0] % 3 == 0:
            # timm's fused projection: output rows are [q; k; v], each heads x head_dim.
            q_k_v = km.src[key].chunk(3, dim=0)
            km.put(key, {f"{dst}.{i}.{n}.{rest[9:]}": t.clone() for n, t in zip(qkv, q_k_v, strict=True)})
        else:
            name = next((n for n in names if rest == n or rest.startswith(n + ".")), None)
            if name is not None:
                km.rename(key, f"{dst}.{i}.{names[name]}{rest[len(name):]}")


def _drop_tower_extras(km: _KeyMap, src: str) -> None:
    for key in km.keys(src):
        rest = key[len(src):]
        why = next((w for p, w in _TOWER_EXTRAS.items() if rest.startswith(p)), None)
        if why is not None:
            km.drop(key, why)


def _check_depth(km: _KeyMap, src: str, want: int, what: str) -> None:
    have = _tower_depth(km, src)
    if have != want:
        raise SgvlaError(f"the {what} tower of {km.report.source} has {have} blocks but the model config has "
                         f"{want}: choose the preset (or --config) this checkpoint was trained with")


def map_dino(km: _KeyMap, config: SGVLAConfig, src: str = "vision_backbone.dino_featurizer.") -> None:
    cfg, dst = config.dino_config, "vision.dino."
    _check_depth(km, src, cfg.num_hidden_layers, "DINOv2")
    for name, target in (("cls_token", "cls_token"), ("reg_token", "register_tokens")):
        if src + name in km.src:
            km.rename(src + name, f"{dst}embeddings.{target}")
    if src + "pos_embed" in km.src:
        pos = _grid_positions(km.src[src + "pos_embed"], config.grid_size, "DINOv2 pos_embed", km.report.notes)
        # HF adds a position to CLS too and none to the registers; timm folded CLS's into cls_token.
        cls_row = torch.zeros_like(pos[:, :1])
        km.put(src + "pos_embed", {f"{dst}embeddings.position_embeddings": torch.cat([cls_row, pos], dim=1)})
    for p in ("weight", "bias"):
        if f"{src}patch_embed.proj.{p}" in km.src:
            km.rename(f"{src}patch_embed.proj.{p}", f"{dst}embeddings.patch_embeddings.projection.{p}")
    _map_blocks(km, src, f"{dst}encoder.layer", cfg.num_hidden_layers, _DINO_BLOCK, _DINO_QKV)
    _drop_tower_extras(km, src)


def map_siglip(km: _KeyMap, config: SGVLAConfig, src: str = "vision_backbone.siglip_featurizer.") -> None:
    cfg, dst = config.siglip_config, "vision.siglip."
    _check_depth(km, src, cfg.num_hidden_layers, "SigLIP")
    if src + "pos_embed" in km.src:
        pos = _grid_positions(km.src[src + "pos_embed"], config.grid_size, "SigLIP pos_embed", km.report.notes)
        km.put(src + "pos_embed", {f"{dst}embeddings.position_embedding.weight": pos[0]})
    for p in ("weight", "bias"):
        if f"{src}patch_embed.proj.{p}" in km.src:
            km.rename(f"{src}patch_embed.proj.{p}", f"{dst}embeddings.patch_embedding.{p}")
    _map_blocks(km, src, f"{dst}encoder.layers", cfg.num_hidden_layers, _SIGLIP_BLOCK, _SIGLIP_QKV)
    _drop_tower_extras(km, src)


def map_projector(km: _KeyMap) -> None:
    for key in km.keys("projector.projector."):
        km.rename(key, "projector.net." + key[len("projector.projector."):])


def map_llm(km: _KeyMap, tied: bool) -> None:
    embed = "llm_backbone.llm.model.embed_tokens.weight"
    for key in km.keys("llm_backbone.llm."):
        target = key[len("llm_backbone."):]
        if key.endswith("rotary_emb.inv_freq"):
            km.drop(key, "rotary frequencies: recomputed from the config")
        elif target == "llm.lm_head.weight" and tied:
            if embed in km.src and not km.src[key].is_meta and not torch.equal(km.src[key], km.src[embed]):
                raise SgvlaError(f"{km.report.source}: lm_head differs from the input embeddings but Qwen2.5-0.5B "
                                 "ties them: this is not MiniVLA's 0.5B LLM")
            km.drop(key, "output head tied to the input embeddings")
        else:
            km.rename(key, target)


# -- the model ----------------------------------------------------------------------------------

def _tokenizer(name: str | None, preset: str):
    """The LLM's tokenizer with MiniVLA's 256 `<|extra_i|>` tokens (name: folder, Hub id or "byte")."""
    from sgvla.model.processing_sgvla import build_byte_tokenizer, ensure_action_tokens

    name = name or ("byte" if preset == "tiny" else HUB_COMPONENTS["llm"])
    if name == "byte":
        tok = build_byte_tokenizer()
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise SgvlaError(f"cannot load the tokenizer {name!r} ({str(e).splitlines()[0]}): give Qwen2.5-0.5B's "
                             "folder or Hub id (available offline)") from None
    return tok, ensure_action_tokens(tok, MINIVLA_EXTRA_TOKENS), name


def _config(preset: str, overrides: Mapping[str, Any], flat: Mapping[str, torch.Tensor], begin: int,
            layout: str, built_from: dict[str, str]) -> SGVLAConfig:
    """The preset + overrides, with what the checkpoint fixes: LLM rows, exact-GELU SigLIP, token ids."""
    embed = flat.get("llm_backbone.llm.model.embed_tokens.weight")
    if embed is None:
        raise SgvlaError(f"{built_from['minivla']} has no llm_backbone.llm.model.embed_tokens.weight: not a "
                         "Prismatic checkpoint of a Qwen2 LLM")
    over = dict(overrides)
    sub = {k: dict(over.pop(k, {}) or {}) for k in ("siglip_config", "text_config")}
    return SGVLAConfig.from_preset(
        preset, **over, siglip_config={**sub["siglip_config"], "hidden_act": "gelu"},
        text_config={**sub["text_config"], "vocab_size": int(embed.shape[0])},
        action_token_begin=begin, action_token_layout=layout, built_from=built_from)


def _check_fit(km: _KeyMap, model: torch.nn.Module, fresh_ok: tuple[str, ...]) -> list[str]:
    """Every mapped tensor has its model key and shape, every model tensor outside `fresh_ok` is given."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    src = km.report.source
    unexpected = km.leftovers() + [k for k in km.out if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} vs {expected[k]}" for k, v in km.out.items()
             if k in expected and tuple(v.shape) != expected[k]]
    fresh = [k for k in expected if k not in km.out]
    missing = [k for k in fresh if not k.startswith(fresh_ok)]
    for label, keys in (("unexpected tensors", unexpected), ("shapes differ", wrong), ("missing tensors", missing)):
        if keys:
            raise SgvlaError(f"{src} does not fit the model ({len(keys)} {label}: {', '.join(keys[:3])}"
                             f"{' ...' if len(keys) > 3 else ''}): import MiniVLA's "
                             "prism-qwen25-extra-dinosiglip-224px+0_5b (or a VLA fine-tuned from it) with the "
                             "sgvla-1.3b preset, or pick the preset/--config it was trained with")
    return fresh


def map_checkpoint(flat: Mapping[str, torch.Tensor], config: SGVLAConfig, model: torch.nn.Module,
                   report: ImportReport) -> dict[str, torch.Tensor]:
    """`model`'s state dict from the flat Prismatic tensors, with every source key accounted for in
    `report`; anything that does not fit `model` (a meta-device one will do) is an SgvlaError."""
    km = _KeyMap(flat, report)
    tied = bool(config.text_config.tie_word_embeddings)
    map_dino(km, config)
    map_siglip(km, config)
    map_projector(km)
    map_llm(km, tied)
    own = ("aux.", "expert.", "vision.dino.embeddings.mask_token", *(("llm.lm_head.weight",) if tied else ()))
    report.fresh = _check_fit(km, model, own)
    return km.out


def _vision_source(flat: dict[str, torch.Tensor], dino: Path | None, siglip: Path | None,
                   report: ImportReport) -> None:
    """Add the towers from timm files when the checkpoint has none (a base VLM trained with frozen towers)."""
    has = any(k.startswith("vision_backbone.") for k in flat)
    if has and (dino or siglip):
        raise SgvlaError(f"{report.source} holds its own vision_backbone (its towers were trained): drop "
                         "--dino/--siglip")
    if has:
        return
    if not (dino and siglip):
        raise SgvlaError(f"{report.source} holds no vision_backbone (MiniVLA's base VLM was trained with frozen "
                         "towers): pass --dino and --siglip, timm's weights of vit_large_patch14_reg4_dinov2.lvd142m "
                         "and vit_so400m_patch14_siglip_224 (Hub repos timm/vit_large_patch14_reg4_dinov2.lvd142m, "
                         "timm/ViT-SO400M-14-SigLIP)")
    for prefix, path, what in (("dino_featurizer.", dino, "DINOv2"), ("siglip_featurizer.", siglip, "SigLIP")):
        flat.update({f"vision_backbone.{prefix}{k}": v for k, v in read_tower(Path(path), what).items()})
        report.notes.append(f"{what} tower from {path}")


def import_minivla_model(checkpoint: str | Path, preset: str = "sgvla-1.3b", overrides: Mapping[str, Any] | None = None,
                         dino: str | Path | None = None, siglip: str | Path | None = None,
                         tokenizer: str | None = None, action_token_layout: str = "sgvla"):
    """(model, processor, report) of a Prismatic checkpoint, in memory (float32).

    `preset` + `overrides` (SGVLAConfig fields: views, history, aux_decoders, ...) give everything the
    checkpoint does not fix; `dino`/`siglip` are timm tower weights for checkpoints without a
    vision_backbone; `tokenizer` is the Qwen2.5 tokenizer (folder or Hub id; "byte": the offline one).
    """
    from sgvla.model.modeling_sgvla import SGVLAForActionPrediction
    from sgvla.model.processing_sgvla import SGVLAProcessor

    ckpt = find_checkpoint(Path(checkpoint))
    report = ImportReport(source=str(ckpt))
    report.notes.extend(check_run_config(ckpt))
    flat = read_prismatic(ckpt)
    _vision_source(flat, Path(dino) if dino else None, Path(siglip) if siglip else None, report)
    tok, begin, tok_name = _tokenizer(tokenizer, preset)
    built_from = {"minivla": str(ckpt), "tokenizer": tok_name,
                  **({"dino": str(dino), "siglip": str(siglip)} if dino else {})}
    config = _config(preset, overrides or {}, flat, begin, action_token_layout, built_from)
    if len(tok) > config.text_config.vocab_size:
        raise SgvlaError(f"the tokenizer {tok_name!r} has {len(tok)} tokens but {ckpt} only "
                         f"{config.text_config.vocab_size} embedding rows: use Qwen2.5-0.5B's tokenizer")
    model = SGVLAForActionPrediction(config)
    model.load_state_dict(map_checkpoint(flat, config, model, report), strict=False)
    with torch.no_grad():
        model.vision.dino.embeddings.mask_token.zero_()
    processor = SGVLAProcessor.from_config(config, tok)
    return model, processor, report


def import_minivla(checkpoint: str | Path, out: str | Path, overwrite: bool = False, **kwargs) -> ImportReport:
    """Import a Prismatic checkpoint into the SG-VLA folder `out` (model + processor, one atomic
    folder swap); keyword arguments as `import_minivla_model`."""
    from sgvla.model.loading import save_policy

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise SgvlaError(f"{out} already exists and is not empty: choose a new folder or pass --overwrite")
    model, processor, report = import_minivla_model(checkpoint, **kwargs)
    save_policy(model, processor, out)
    report.notes.append(f"wrote {out}")
    return report


def settings_from_train_config(path: Path) -> tuple[str, dict[str, Any]]:
    """(preset, overrides) of a training YAML's model section, so the imported model has the run's
    views, history, decoders and expert (`sgvla train --set model.init_from=OUT` keeps them)."""
    from sgvla.train.config import load_config

    cfg = load_config(Path(path))
    return cfg.model.preset, cfg.model.preset_overrides()
