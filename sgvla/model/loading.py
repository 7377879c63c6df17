"""Loading and saving SG-VLA: checkpoints (strict: nothing silently re-initialised), the model with
its processor, and pretrained parts.

`transformers`' `from_pretrained` warns and randomly initialises weights whose shapes do not match
or that are missing; for a policy that would silently produce garbage actions, so `load_model`
makes every such case an SgvlaError. The model class keeps transformers' own `from_pretrained`.

    model, processor = load_policy("runs/tiny/model")       # both, checked against each other
    save_policy(model, processor, "out/model")              # both, in one atomic folder swap
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from sgvla.errors import SgvlaError, load_json
from sgvla.hub import is_repo_id
from sgvla.model.configuration_sgvla import HUB_COMPONENTS, SGVLAConfig
from sgvla.model.processing_sgvla import SGVLAProcessor, check_action_decoding, ensure_action_tokens


def load_model(path: str | os.PathLike, **kwargs):
    """`SGVLAForActionPrediction.from_pretrained(path, **kwargs)`, refusing with an SgvlaError a
    folder that is not an SG-VLA checkpoint, weights that are missing, unexpected or of another
    shape (transformers would re-initialise them at random), and a config.json edited after the
    weights were saved (action_decoding.json)."""
    from transformers import PreTrainedConfig

    from sgvla.model.modeling_sgvla import SGVLAForActionPrediction

    if not Path(path).exists() and not is_repo_id(str(path)):
        raise SgvlaError(f"checkpoint folder {path} does not exist: give a folder written by save_pretrained")
    try:
        cfg_dict, _ = PreTrainedConfig.get_config_dict(str(path))
    except OSError as e:
        raise SgvlaError(f"cannot read {path}/config.json ({e}): give a folder written by save_pretrained") from None
    if cfg_dict.get("model_type") != SGVLAConfig.model_type:
        raise SgvlaError(f"{path} holds a {cfg_dict.get('model_type')!r} model, not an SG-VLA checkpoint: "
                         "use load_components() for pretrained towers/LLM")
    kwargs["output_loading_info"] = True
    try:
        model, info = SGVLAForActionPrediction.from_pretrained(str(path), **kwargs)
    except RuntimeError as e:  # size mismatches raised by torch
        raise SgvlaError(f"checkpoint {path} does not fit this model configuration ({str(e).splitlines()[0]}): "
                         "load it with its own config.json") from None
    problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k}: {v[:3]}{' ...' if len(v) > 3 else ''}" for k, v in problems.items())
        raise SgvlaError(f"checkpoint {path} has another shape than the requested model ({detail}): load it "
                         "without config overrides, or retrain")
    if Path(path).is_dir():
        check_action_decoding(Path(path), model.config)
    return model


def load_processor(path: str | os.PathLike, config: SGVLAConfig | None = None) -> SGVLAProcessor:
    """The processor saved next to a model (`AutoProcessor.from_pretrained` gives the same), checked
    against `config` when given; folders without processor_config.json get one built from their
    config.json (see `SGVLAProcessor.from_pretrained`)."""
    try:
        processor = SGVLAProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise SgvlaError(f"cannot load the processor of {path} ({str(e).splitlines()[0]}): give a folder written "
                         "by save_policy") from None
    if config is not None:
        processor.check_model(config)
    return processor


def load_policy(path: str | os.PathLike, **kwargs):
    """(model, processor) of a saved folder or Hub id: `load_model` + `load_processor`, checked
    against each other. Keyword arguments go to `load_model` (e.g. `dtype`)."""
    model = load_model(path, **kwargs)
    return model, load_processor(path, model.config)


def save_policy(model, processor: SGVLAProcessor, path: str | os.PathLike, **kwargs) -> Path:
    """The model (`save_pretrained`, keyword arguments such as `state_dict` go there) and its processor
    into one folder that replaces `path` as a whole, so the two can never come from different saves."""
    from sgvla.model.modeling_sgvla import write_folder_atomically

    processor.check_model(model.config)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, **kwargs)
        processor.save_pretrained(str(tmp))

    return write_folder_atomically(path, write)


def check_checkpoint_files(path: Path, config: SGVLAConfig) -> None:
    """Every weight file of a saved checkpoint is readable safetensors holding the tensors `config`
    describes, with their shapes, and every weight is finite. The model is built on the meta device
    and the tensors are streamed one at a time, so the evaluation driver refuses a broken checkpoint
    in seconds, before any worker loads it (a NaN model would otherwise roll out garbage actions and
    report a plausible-looking 0% success)."""
    from safetensors import safe_open

    from sgvla.model.modeling_sgvla import SGVLAForActionPrediction

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = load_json(index, "save or copy the checkpoint again").get("weight_map", {})
        files = sorted({path / f for f in weight_map.values()})
    else:
        files = [path / "model.safetensors"]
    for f in files:
        if not f.is_file():
            pickled = [p.name for p in path.glob("*.bin")]
            hint = f" (it has {pickled[0]}: pickle weights are never loaded)" if pickled else ""
            raise SgvlaError(f"checkpoint {path} has no {f.name}{hint}: give a folder written by save_pretrained")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SGVLAForActionPrediction(config).state_dict().items()}
    found: dict[str, tuple] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                found.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
        except Exception as e:  # safetensors raises its own error types for torn headers
            raise SgvlaError(f"{f} is not a readable safetensors file ({str(e).splitlines()[0]}): the checkpoint "
                             "is truncated or corrupt; save or copy it again") from None
    # transformers renames some towers' keys on save (its checkpoint conversions), so names are
    # compared where they agree and the rest by count; the tied LM head is saved once.
    wrong = [k for k, shape in found.items() if k in expected and expected[k] != shape]
    need = len(expected) - (1 if config.text_config.tie_word_embeddings else 0)
    if wrong or len(found) < need:
        detail = f"shapes differ for {wrong[:3]}" if wrong else f"{len(found)} tensors where it needs {need}"
        raise SgvlaError(f"checkpoint {path} does not match its config.json ({detail}): load it with its own "
                         "config.json, or retrain")
    _check_finite_weights(files)


def _check_finite_weights(files: list[Path]) -> None:
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                t = st.get_tensor(k)
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise SgvlaError(f"checkpoint {f.parent} has NaN/inf weights ({k}): the training run that "
                                     "wrote it diverged; evaluate an earlier snapshot or checkpoint, or retrain")


def _component(kind: str, loader, src: str, model_types: tuple[str, ...]):
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise SgvlaError(f"cannot load the {kind} component {src!r} ({str(e).splitlines()[0]}): give a folder "
                         "written by save_pretrained or a Hub id available offline") from None
    if cfg.model_type not in model_types:
        raise SgvlaError(f"{kind} component {src!r} is a {cfg.model_type!r} model; expected "
                         f"{' or '.join(model_types)}")
    return loader.from_pretrained(src, dtype=torch.float32)


def _resampled_dino_positions(dino, size: int) -> torch.Tensor:
    """DINO position embeddings resampled once to `size` px with the model's own bicubic routine, so
    the result equals what the checkpoint computes on the fly at that size."""
    emb = dino.embeddings
    n = (size // dino.config.patch_size) ** 2
    with torch.no_grad():
        return emb.interpolate_pos_encoding(torch.zeros(1, n + 1, dino.config.hidden_size), size, size).clone()


def _without_last_block(state: dict, block_prefix: str, n_layers: int, drop: tuple[str, ...]) -> dict:
    last = f"{block_prefix}.{n_layers - 1}."
    return {k: v for k, v in state.items() if not k.startswith(last) and not k.startswith(drop)}


def _load_exact(module: torch.nn.Module, state: dict, what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SgvlaError(f"the {what} weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_components(dino: str = HUB_COMPONENTS["dino"], siglip: str = HUB_COMPONENTS["siglip"],
                    llm: str = HUB_COMPONENTS["llm"], tokenizer: str | None = None, dtype: torch.dtype | None = None,
                    **overrides):
    """(model, processor) assembled from pretrained DINOv2-with-registers, SigLIP (vision or full) and
    Qwen2 parts (local folders or Hub ids; the defaults are the paper's Hub ids).

    The DINO position grid is resampled once to `image_size`, the towers' last blocks are dropped,
    the action tokens are added to the tokenizer (`tokenizer`, default `llm`'s) and the LLM's
    embeddings grown if needed; projector, decoders and expert start random. `overrides` are
    SGVLAConfig fields (views, history, aux_decoders, ...)."""
    from transformers import AutoTokenizer, Dinov2WithRegistersModel, Qwen2ForCausalLM, SiglipVisionModel

    from sgvla.model.modeling_sgvla import SGVLAForActionPrediction

    size = int(overrides.get("image_size", SGVLAConfig.image_size))
    dino_m = _component("DINOv2", Dinov2WithRegistersModel, dino, ("dinov2_with_registers",))
    sig_m = _component("SigLIP", SiglipVisionModel, siglip, ("siglip", "siglip_vision_model"))
    llm_m = _component("LLM", Qwen2ForCausalLM, llm, ("qwen2",))
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or llm)
    except (OSError, ValueError) as e:
        raise SgvlaError(f"cannot load the tokenizer from {tokenizer or llm!r} ({str(e).splitlines()[0]})") \
            from None
    n_bins = int(overrides.get("n_action_bins", SGVLAConfig.n_action_bins))
    begin = ensure_action_tokens(tok, n_bins)
    if len(tok) > llm_m.config.vocab_size:
        llm_m.resize_token_embeddings(len(tok), pad_to_multiple_of=64)

    dino_state = dino_m.state_dict()
    dino_cfg = copy.deepcopy(dino_m.config)
    if dino_cfg.image_size != size:
        dino_state["embeddings.position_embeddings"] = _resampled_dino_positions(dino_m, size)
        dino_cfg.image_size = size
    sig_cfg = copy.deepcopy(sig_m.config)
    sig_cfg.vision_use_head = False
    config = SGVLAConfig(dino_config=dino_cfg, siglip_config=sig_cfg, text_config=copy.deepcopy(llm_m.config),
                         action_token_begin=begin,
                         built_from={"dino": str(dino), "siglip": str(siglip), "llm": str(llm)}, **overrides)
    model = SGVLAForActionPrediction(config)
    _load_exact(model.vision.dino, _without_last_block(dino_state, "encoder.layer", dino_cfg.num_hidden_layers,
                                                       ("layernorm.",)), "DINOv2")
    _load_exact(model.vision.siglip, _without_last_block(sig_m.state_dict(), "encoder.layers",
                                                         sig_cfg.num_hidden_layers, ("post_layernorm.", "head.")),
                "SigLIP")
    _load_exact(model.llm, llm_m.state_dict(), "LLM")
    return (model.to(dtype) if dtype is not None else model), SGVLAProcessor.from_config(config, tok)
