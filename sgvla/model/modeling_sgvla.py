"""SG-VLA: fused DINOv2+SigLIP vision over RGB/depth views, Qwen2.5 LLM, discrete action tokens,
auxiliary decoders and an optional flow-matching action expert (paper Sec. 4-6).

Sequence layout: [first text token, V x P projected patch tokens, rest of the prompt, answer]. The
prefix is everything before the answer (images + prompt up to the assistant header); the auxiliary
decoders and the flow expert read only the prefix, so training and inference see the same thing.

Training switches (see `forward`, `configure_stage`):
* `compute=`: which losses to compute ("action", auxiliary decoder names, "flow"); default
  `model.compute_losses` or, if unset, everything the config enables.
* `config.aux_detach` / `set_aux_detach()`: decoders listed there read *detached* LLM features, so
  their losses put zero gradient into the backbone (paper's stage 1).
* `freeze_vlm()` / `unfreeze()`: stage 3 freezes everything but the expert.
* `configure_stage(1 | 2 | 3)`: the three settings of the paper in one call.
The flow loss always uses detached prefix keys/values: flow gradients never reach the VLM (Sec. 5.3).

The model holds no tokenizer (as transformers' own models): `SGVLAProcessor` turns observations and
instructions into `input_ids`/`pixel_values` and actions back into env units; `predict_action`
takes it as an argument. Strict loading (nothing silently re-initialised) is
`sgvla.model.load_model` / `load_policy`; `from_pretrained` is transformers' own.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import LogitsProcessor, PreTrainedModel, Qwen2ForCausalLM
from transformers import initialization as init
from transformers.utils import ModelOutput

from sgvla.errors import SgvlaError
from sgvla.model.action_tokenizer import ActionTokenizer
from sgvla.model.aux_decoders import AuxiliaryDecoders, QposDecoder
from sgvla.model.configuration_sgvla import ACTION_MODES, TOKEN_DECODINGS, SGVLAConfig
from sgvla.model.flow_expert import FlowMatchingExpert
from sgvla.model.processing_sgvla import (
    ACTION_DECODING_FILE,
    IGNORE_INDEX,
    SGVLAProcessor,
    action_decoding,
    byte_tokenizer_action_begin,
)
from sgvla.model.vision import FusedMLPProjector, FusedVisionBackbone
from sgvla.transforms import CropBoxes, check_raw, raw_to_towers
from sgvla.vocab import AUX_NAMES

LOSS_NAMES: tuple[str, ...] = ("action", *AUX_NAMES, "flow")


@dataclass
class SGVLAOutput(ModelOutput):
    """`loss`: weighted total of the computed parts; `losses`: each part unweighted ("action", aux
    names, "flow"); `token_accuracy`: argmax accuracy on the action tokens; `aux_predictions`."""

    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    token_accuracy: torch.Tensor | None = None
    aux_predictions: dict[str, Any] | None = None


@dataclass
class ActionPrediction:
    """Result of `predict_action`: un-normalised actions in the env's action space.

    `action`: the first action (action_dim,); `chunk`: all predicted steps (H, action_dim) for
    flow, (1, action_dim) for tokens; `execute`: the steps to run open-loop before re-planning
    (config.execute_steps for flow, 1 for tokens); `normalized_chunk`: `chunk` before
    un-normalisation, in [-1, 1]; `mode`: "tokens" or "flow".
    """

    action: np.ndarray
    chunk: np.ndarray
    execute: np.ndarray
    normalized_chunk: np.ndarray
    mode: str


class ActionTokensOnly(LogitsProcessor):
    """Logits processor for `generate`: only the action token ids may be emitted."""

    def __init__(self, begin: int, end: int):
        self.begin, self.end = begin, end

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(scores, float("-inf"))
        out[:, self.begin:self.end] = scores[:, self.begin:self.end]
        return out


def _build_expert(config: SGVLAConfig) -> FlowMatchingExpert:
    """Build the expert on a fork of the global random stream: its construction draws random numbers,
    and without the fork the VLM's `post_init` (which runs after it) would start from a state that
    depends on the expert's sizes, so attaching or resizing an expert would change the VLM's
    initialisation (measured: 38 of the tiny VLM's 229 tensors). The expert itself is re-initialised
    by `post_init` last, after every VLM module. (`add_flow_expert` needs no fork: the VLM is built.)"""
    with torch.random.fork_rng(devices=[]):
        return FlowMatchingExpert(config)


class SGVLAPreTrainedModel(PreTrainedModel):
    config_class = SGVLAConfig
    base_model_prefix = "sgvla"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["Qwen2DecoderLayer", "ExpertLayer", "Dinov2WithRegistersLayer", "SiglipEncoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, QposDecoder):
            init.normal_(module.mask_tokens, mean=0.0, std=0.02)


class SGVLAForActionPrediction(SGVLAPreTrainedModel):
    """The SG-VLA policy. Build with `SGVLAForActionPrediction(SGVLAConfig.from_preset(...))` (random
    init), `sgvla.model.load_components(...)` (pretrained towers + LLM) or
    `sgvla.model.load_model(folder)` (strict `from_pretrained`); its processor comes from
    `SGVLAProcessor.from_config(config)` or `AutoProcessor.from_pretrained(folder)`."""

    def __init__(self, config: SGVLAConfig):
        super().__init__(config)
        self.vision = FusedVisionBackbone(config.dino_config, config.siglip_config)
        self.projector = FusedMLPProjector(config.vision_dim, config.text_config.hidden_size,
                                           config.projector_hidden_size)
        self.llm = Qwen2ForCausalLM(config.text_config)
        self.aux = AuxiliaryDecoders(config)
        self.expert = _build_expert(config) if config.use_flow_expert else None
        if config.action_token_begin is None:
            # A config that does not say where the action tokens are gets the offline byte tokenizer's
            # layout (what `SGVLAProcessor.from_config` then builds), fixed in the config before
            # anything (DataLoader workers, save_pretrained) reads it.
            config.action_token_begin = byte_tokenizer_action_begin()
            config.validate_sgvla()
        self.action_tokenizer = ActionTokenizer.from_config(self.config)
        #: Losses `forward` computes when `compute` is not given (None: all enabled ones).
        self.compute_losses: tuple[str, ...] | None = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    # -- training switches -------------------------------------------------------------------
    def set_aux_detach(self, detach: bool | Iterable[str]) -> None:
        """True: all auxiliary decoders read detached features (stage 1); False: none; or a list."""
        names = list(self.config.aux_decoders) if detach is True else [] if detach is False else list(detach)
        unknown = [n for n in names if n not in AUX_NAMES]
        if unknown:
            raise SgvlaError(f"set_aux_detach got unknown decoder(s) {unknown}: choose from {', '.join(AUX_NAMES)}")
        self.config.aux_detach = names

    def vlm_modules(self) -> list[nn.Module]:
        """Everything except the flow expert (towers, projector, LLM, auxiliary decoders)."""
        return [self.vision, self.projector, self.llm, self.aux]

    def add_flow_expert(self) -> None:
        """Attach a freshly initialised flow expert to a model trained without one. Stage 3 trains the
        expert alone on the frozen VLM, so any finished VLA can get one afterwards: the comparison of
        the paper's Table 5 (tokens vs flow on the same VLM) then needs no second VLM training."""
        if self.expert is not None:
            raise SgvlaError("this model already has a flow expert")
        self.config.use_flow_expert = True
        self.expert = FlowMatchingExpert(self.config)
        self.expert.apply(self._init_weights)

    def freeze_vlm(self) -> None:
        """Stage 3: only the flow expert keeps `requires_grad`."""
        for m in self.vlm_modules():
            m.requires_grad_(False)
        if self.expert is not None:
            self.expert.requires_grad_(True)

    def unfreeze(self) -> None:
        """Every parameter trainable again (except DINO's unused mask token)."""
        self.requires_grad_(True)
        self.vision.dino.embeddings.mask_token.requires_grad_(False)

    def configure_stage(self, stage: int) -> None:
        """The paper's schedule, in one place: trainable parameters, train/eval modes and losses.

        1: action + aux losses, the decoders reading detached features; 2: the same with full
        gradients; the flow expert is frozen in both (it has no loss there, and an unused trainable
        parameter stalls DDP). 3: flow loss only, everything but the expert frozen and in eval mode
        (no dropout, no statistics updates). Wrap the model in DDP after calling this."""
        aux = tuple(self.config.aux_decoders)
        if stage in (1, 2):
            self.unfreeze()
            if self.expert is not None:
                self.expert.requires_grad_(False)
            self.set_aux_detach(stage == 1)
            self.compute_losses = ("action", *aux)
            self.train()
        elif stage == 3:
            if self.expert is None:
                raise SgvlaError("stage 3 trains the flow expert but this model has use_flow_expert=False")
            self.freeze_vlm()
            self.compute_losses = ("flow",)
            self.train()
            for sub in self.vlm_modules():
                sub.eval()
        else:
            raise SgvlaError(f"training stage must be 1, 2 or 3, got {stage!r}")

    def _resolve_compute(self, compute: Iterable[str] | None) -> set[str]:
        if compute is None:
            compute = self.compute_losses
        if compute is None:
            compute = ["action", *self.config.aux_decoders] + (["flow"] if self.expert is not None else [])
        names = set(compute)
        if not names:
            raise SgvlaError(f"compute= is empty: name at least one of {', '.join(LOSS_NAMES)}")
        unknown = names - set(LOSS_NAMES)
        if unknown:
            raise SgvlaError(f"compute= has unknown loss(es) {sorted(unknown)}: choose from {', '.join(LOSS_NAMES)}")
        off = [n for n in names & set(AUX_NAMES) if n not in self.config.aux_decoders]
        if off:
            raise SgvlaError(f"compute= asks for decoder(s) {off} that this model does not have "
                             f"(aux_decoders={self.config.aux_decoders})")
        if "flow" in names and self.expert is None:
            raise SgvlaError("compute= asks for 'flow' but this model has use_flow_expert=False")
        return names

    # -- inputs ------------------------------------------------------------------------------
    def encode_images(self, pixel_values: Mapping[str, torch.Tensor], crops: CropBoxes | None = None) -> torch.Tensor:
        """{view: raw frames (B, T, H, W[, 3])} -> projected patch tokens (B, T * V * P, llm width).

        The data pipeline and the processor both give the raw frames (`transforms.raw_frames`:
        uint8 RGB, uint16 depth millimetres); only the model turns them into the towers' inputs
        (`transforms.raw_to_towers`: RGB / 255, Eq. 1 depth, resize, normalisation), on its own
        device, so training and evaluation cannot feed the towers different inputs. With
        `crop_area` < 1 the views are cut to `crops` (default: the centre boxes).
        """
        c = self.config
        check_raw(pixel_values, c.views, c.history + 1)
        if crops is None and c.crop_area < 1:
            crops = self._crop_boxes(next(iter(pixel_values.values())).shape[0], random=False)
        towers = raw_to_towers(pixel_values, c.views, c.image_size, crops)
        return self.encode_tower_inputs(towers["dino"], towers["siglip"])

    def _crop_boxes(self, batch: int, random: bool) -> CropBoxes:
        return CropBoxes.draw(batch, self.config.mask_cameras, self.config.crop_area, random)

    def _crop_masks(self, aux: Mapping[str, torch.Tensor] | None, crops: CropBoxes) -> dict | None:
        """Target masks cut to the boxes their camera's views are cut to."""
        if aux is None:
            return None
        out = dict(aux)
        for cam in crops.cameras:
            if f"{cam}_mask" in out:
                out[f"{cam}_mask"] = crops.crop_mask(torch.as_tensor(out[f"{cam}_mask"]), cam)
        return out

    def encode_tower_inputs(self, dino: torch.Tensor, siglip: torch.Tensor) -> torch.Tensor:
        """Normalised tower inputs (B, V, 3, S, S) each -> projected patch tokens (B, V * P, llm width).

        The step after `raw_to_towers`; public so that checks against other implementations (which
        normalise in their own way) can feed the towers directly.
        """
        want = self.config.pixel_shape
        b, v = dino.shape[:2]
        dtype = self.projector.net[0].weight.dtype
        dino = dino.reshape(b * v, *want[1:]).to(dtype)
        sig = siglip.reshape(b * v, *want[1:]).to(dtype)
        feats = self.vision(dino, sig)
        return self.projector(feats).reshape(b, v * feats.shape[1], -1)

    def _assemble(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, images: torch.Tensor,
                  labels: torch.Tensor | None = None):
        """Insert the image tokens after the first text token (text is right-padded)."""
        emb = self.llm.get_input_embeddings()(input_ids)
        images = images.to(emb.dtype)
        embeds = torch.cat([emb[:, :1], images, emb[:, 1:]], dim=1)
        b, n = input_ids.shape[0], images.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ones = attention_mask.new_ones(b, n)
        attn = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        full_labels = None
        if labels is not None:
            ign = labels.new_full((b, n), IGNORE_INDEX)
            full_labels = torch.cat([labels[:, :1], ign, labels[:, 1:]], dim=1)
        return embeds, attn, full_labels

    def _camera_grids(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """Current-frame patch tokens of each camera (its views averaged): (B, P, width)."""
        c, p = self.config, self.config.patches_per_image
        grids = {}
        for cam in c.mask_cameras:
            idx = [c.image_index(c.history, v) for v in c.views if v.startswith(cam + "_")]
            grids[cam] = torch.stack([hidden[:, 1 + j * p: 1 + (j + 1) * p] for j in idx]).mean(0)
        return grids

    def _llm_prefix_cache(self, embeds: torch.Tensor, attn: torch.Tensor | None):
        """LLM forward that always returns a KV cache (no grad, and bypassing gradient checkpointing,
        which would drop the cache): used for the flow expert's detached prefix."""
        was_training = self.llm.training
        self.llm.train(False)
        try:
            with torch.no_grad():
                return self.llm.model(inputs_embeds=embeds, attention_mask=attn, use_cache=True)
        finally:
            self.llm.train(was_training)

    # -- training forward --------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: Mapping[str, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        action: torch.Tensor | None = None,
        action_chunk: torch.Tensor | None = None,
        action_chunk_pad: torch.Tensor | None = None,
        aux: Mapping[str, torch.Tensor] | None = None,
        aux_valid: Mapping[str, torch.Tensor] | None = None,
        compute: Iterable[str] | None = None,
        subtask: list[str] | None = None,
    ) -> SGVLAOutput:
        """Losses for one batch from `SGVLAProcessor.collate` (right-padded text).

        `compute` selects the losses (see module doc); `action` and `subtask` are accepted and ignored
        (they ride along in the batch: the action loss reads `labels`, `subtask` is for logging).
        """
        names = self._resolve_compute(compute)
        if "action" in names and labels is None:
            raise SgvlaError("the action loss needs `labels` (use SGVLAProcessor.collate)")
        if "flow" in names and action_chunk is None:
            raise SgvlaError("the flow loss needs `action_chunk` in the batch (or leave 'flow' out of compute)")
        crops = None
        if self.config.crop_area < 1:  # augmentation in training, the centre crop otherwise
            crops = self._crop_boxes(input_ids.shape[0], random=self.training)
            aux = self._crop_masks(aux, crops)
        images = self.encode_images(pixel_values, crops)
        embeds, attn, full_labels = self._assemble(input_ids, attention_mask, images, labels)
        prefix_len, prefix_mask = self._prefix_extent(attn, full_labels)
        aux_names = [n for n in self.config.aux_decoders if n in names]

        hidden, cache = None, None
        if "action" in names or aux_names:
            ckpt = self.llm.is_activation_checkpointing and self.llm.training
            out = self.llm.model(inputs_embeds=embeds, attention_mask=attn, use_cache="flow" in names and not ckpt)
            hidden, cache = out.last_hidden_state, out.past_key_values
        if "flow" in names and cache is None:
            cache = self._llm_prefix_cache(embeds.detach(), attn).past_key_values

        losses: dict[str, torch.Tensor] = {}
        result = SGVLAOutput(losses=losses)
        if "action" in names:
            self._action_loss(hidden, full_labels, result)
        if aux_names:
            grids_live = self._camera_grids(hidden) if "mask" in aux_names else None
            preds = {}
            for name in aux_names:
                detach = name in self.config.aux_detach
                h = hidden.detach() if detach else hidden
                grids = {k: g.detach() for k, g in grids_live.items()} if detach and grids_live else grids_live
                preds[name] = self.aux.predict(name, h, prefix_mask, grids)
                losses[name] = self.aux.loss(name, preds[name], aux, aux_valid)
            result.aux_predictions = preds
        if "flow" in names:
            kv = [(layer.keys.detach(), layer.values.detach()) for layer in cache.layers]
            losses["flow"] = self.expert.loss(action_chunk, action_chunk_pad, kv, prefix_mask, prefix_len,
                                              self.llm.model.rotary_emb)
        result.loss = sum(self._weight(n) * v for n, v in losses.items())
        return result

    def _weight(self, name: str) -> float:
        if name == "action":
            return 1.0
        if name == "flow":
            return float(self.config.flow_weight)
        return float(self.config.aux_weights.get(name, 1.0))

    @staticmethod
    def _prefix_extent(attn: torch.Tensor, full_labels: torch.Tensor | None):
        """(prefix_len (B,), prefix_mask (B, T)): the tokens before the answer, without padding."""
        n_valid = attn.sum(1)
        if full_labels is None:
            prefix_len = n_valid
        else:
            has = full_labels != IGNORE_INDEX
            first = has.long().argmax(1)
            prefix_len = torch.where(has.any(1), first, n_valid)
        pos = torch.arange(attn.shape[1], device=attn.device)
        return prefix_len, (pos.unsqueeze(0) < prefix_len.unsqueeze(1)) & attn.bool()

    def _action_loss(self, hidden: torch.Tensor, full_labels: torch.Tensor, result: SGVLAOutput) -> None:
        """Cross-entropy on the answer tokens; logits only where a label exists (saves a full-vocab
        projection of every image token)."""
        target = full_labels[:, 1:]
        sel = target != IGNORE_INDEX
        logits = self.llm.lm_head(hidden[:, :-1][sel]).float()
        tgt = target[sel]
        result.losses["action"] = F.cross_entropy(logits, tgt)
        with torch.no_grad():
            is_act = self.action_tokenizer.is_action(tgt)
            result.token_accuracy = (logits.argmax(-1)[is_act] == tgt[is_act]).float().mean()

    # -- inference ---------------------------------------------------------------------------
    def _inference_inputs(self, pixel_values: Mapping[str, torch.Tensor], input_ids: torch.Tensor):
        """Input embeddings of unpadded prompts of one length (B, L)."""
        return self._prompt_inputs(pixel_values, input_ids)[0]

    def _prompt_inputs(self, pixel_values: Mapping[str, torch.Tensor], input_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None = None):
        """(embeds, attn, position_ids) of inference prompts; attn and position_ids are None when
        nothing is padded (the plain causal path, bit-identical to a batch of one).

        Prompts of different lengths come LEFT-padded (`SGVLAProcessor.batch`), so that every row
        ends at its assistant header, where decoding continues. Each row gets its image tokens after
        its first real token (as in training) and position ids that count real tokens only, so a
        padded row is, to the LLM, the sequence it would be alone.
        """
        images = self.encode_images(pixel_values)
        if attention_mask is None or bool(attention_mask.all()):
            return self._assemble(input_ids, None, images)[0], None, None
        mask = attention_mask.to(input_ids.device).long()
        if bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise SgvlaError("inference prompts must be left-padded (attention_mask 0..0 1..1 per row), as "
                             "SGVLAProcessor.batch gives them: decoding continues after each row's last token")
        emb = self.llm.get_input_embeddings()(input_ids)
        images = images.to(emb.dtype)
        rows, attn = [], []
        for e, img, m in zip(emb, images, mask, strict=True):
            k = int((m == 0).sum()) + 1  # the pads and the first real token come before the images
            rows.append(torch.cat([e[:k], img, e[k:]]))
            attn.append(torch.cat([m[:k], m.new_ones(img.shape[0]), m[k:]]))
        attn_t = torch.stack(attn)
        return torch.stack(rows), attn_t, (attn_t.cumsum(1) - 1).clamp(min=0)

    def _best_action_token(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy choice among the action tokens only: (ids (B,), restricted logits (B, n_bins))."""
        tok = self.action_tokenizer
        logits = F.linear(h, self.llm.lm_head.weight[tok.begin:tok.end]).float()
        return logits.argmax(-1) + tok.begin, logits

    @torch.no_grad()
    def decode_action_tokens(self, pixel_values: Mapping[str, torch.Tensor], input_ids: torch.Tensor,
                             return_logits: bool = False, attention_mask: torch.Tensor | None = None):
        """Greedy decoding of the answer's action tokens (B, token_chunk x action_dim) for prompts (B, L),
        left-padded where `attention_mask` says so: the prefix runs once and each new token costs one
        step on the KV cache."""
        embeds, attn, pos = self._prompt_inputs(pixel_values, input_ids, attention_mask)
        embed = self.llm.get_input_embeddings()
        out = self.llm.model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=True)
        ids, logits = [], []
        n = self.config.n_action_tokens
        for i in range(n):
            nxt, lg = self._best_action_token(out.last_hidden_state[:, -1])
            ids.append(nxt)
            logits.append(lg)
            if i + 1 < n:
                if attn is not None:  # the new token is real and continues its row's positions
                    attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
                    pos = pos[:, -1:] + 1
                out = self.llm.model(inputs_embeds=embed(nxt).unsqueeze(1), attention_mask=attn, position_ids=pos,
                                     past_key_values=out.past_key_values, use_cache=True)
        ids_t = torch.stack(ids, dim=1)
        return (ids_t, torch.stack(logits, dim=1)) if return_logits else ids_t

    @torch.no_grad()
    def generate_action_tokens(self, pixel_values: Mapping[str, torch.Tensor], input_ids: torch.Tensor):
        """The same greedy, action-only decoding through `transformers`' `generate` (a reference)."""
        embeds = self._inference_inputs(pixel_values, input_ids)
        tok = self.action_tokenizer
        attn = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        n = self.config.n_action_tokens
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attn, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, logits_processor=[ActionTokensOnly(tok.begin, tok.end)],
                                 pad_token_id=self._pad_token_id())[:, -n:]

    def _pad_token_id(self) -> int:
        """The LLM's padding id (its end-of-text when it names none): only `generate` needs one."""
        tc = self.config.text_config
        for i in (tc.pad_token_id, tc.eos_token_id):
            if isinstance(i, list):
                i = i[0] if i else None
            if i is not None:
                return int(i)
        return 0

    @torch.no_grad()
    def sample_action_chunk(self, pixel_values: Mapping[str, torch.Tensor], input_ids: torch.Tensor,
                            noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                            steps: int | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-expert chunk (B, H, action_dim), normalised: one prefix pass, `flow_steps` Euler steps.
        Left-padded prompts (`attention_mask`): the expert ignores the pad keys and continues each
        row's own positions, so row i's chunk is the one it would get alone from the same noise."""
        if self.expert is None:
            raise SgvlaError("this model has no flow expert (use_flow_expert=False): use mode='tokens'")
        embeds, attn, pos = self._prompt_inputs(pixel_values, input_ids, attention_mask)
        cache = self.llm.model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos,
                               use_cache=True).past_key_values
        b, p = embeds.shape[:2]
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        plen = torch.full((b,), p, dtype=torch.long, device=embeds.device) if attn is None else attn.sum(1)
        if noise is None:
            noise = torch.randn(b, self.config.chunk_size, self.config.action_dim, generator=generator,
                                device=embeds.device if generator is None else generator.device)
        return self.expert.sample(kv, None if attn is None else attn.bool(), plen, self.llm.model.rotary_emb,
                                  noise.to(embeds.device), steps or self.config.flow_steps)

    def _noise(self, generators: Sequence[torch.Generator | None] | None, b: int, device: torch.device) -> torch.Tensor:
        """Initial flow noise (b, H, action_dim); row i drawn from `generators[i]` (its episode's, so a
        row's noise never depends on the other rows of a batch), or all from torch's global RNG."""
        shape = (self.config.chunk_size, self.config.action_dim)
        if generators is None:
            return torch.randn(b, *shape, device=device)
        return torch.cat([torch.randn(1, *shape, generator=g, device=device if g is None else g.device).to(device)
                          for g in generators])

    def resolve_mode(self, mode: str, subtask: str | None) -> str:
        """'tokens'/'flow' as given; 'auto' looks the subtask up in config.subtask_modes (paper's
        task-adaptive control) and falls back to tokens when the model has no expert."""
        if mode in ACTION_MODES:
            return mode
        if mode != "auto":
            raise SgvlaError(f"mode={mode!r}: use 'tokens', 'flow' or 'auto'")
        if subtask is None:
            raise SgvlaError("mode='auto' chooses per subtask: pass subtask= (e.g. 'pick') or a fixed mode")
        if subtask not in self.config.subtask_modes:
            raise SgvlaError(f"subtask {subtask!r} has no entry in config.subtask_modes "
                             f"{self.config.subtask_modes}: add one or pass mode='tokens'/'flow'")
        chosen = self.config.subtask_modes[subtask]
        return "tokens" if chosen == "flow" and self.expert is None else chosen

    @torch.no_grad()
    def predict_action(self, observation: Mapping[str, Any], instruction: str, subtask: str | None = None,
                       mode: str = "auto", generator: torch.Generator | None = None, *,
                       processor: SGVLAProcessor, token_decoding: str | None = None) -> ActionPrediction:
        """Actions for one raw observation (see `SGVLAProcessor.observation_pixels` for its format);
        `processor` (this model's, e.g. `AutoProcessor.from_pretrained(folder)`) builds the inputs
        and un-normalises the actions, after checking that it belongs to this model's config.
        `token_decoding` ("greedy" / "expected") overrides the config's for tokens mode."""
        return self.predict_actions([observation], [instruction], subtask, mode, [generator], processor=processor,
                                    token_decoding=token_decoding)[0]

    @torch.no_grad()
    def predict_actions(self, observations: Sequence[Mapping[str, Any]], instructions: Sequence[str],
                        subtask: str | None = None, mode: str = "auto",
                        generators: Sequence[torch.Generator | None] | None = None, *,
                        processor: SGVLAProcessor, token_decoding: str | None = None) -> list[ActionPrediction]:
        """`predict_action` for a batch (one subtask's), in ONE model call: an evaluation stepping
        several envs queries the model once per step instead of once per env. Prompts of different
        lengths are left-padded, and in flow mode row i's noise comes from `generators[i]`, so every
        row gets the actions it would get alone (up to float rounding), whatever else is in the batch."""
        processor.check_model(self.config)
        if processor.action_stats is None:
            raise SgvlaError("the model has no action_stats, so actions cannot be un-normalised: set "
                             "config.action_stats to the dataset's meta/stats.json 'action' entry")
        if generators is not None and len(generators) != len(observations):
            raise SgvlaError(f"predict_actions got {len(generators)} generators for {len(observations)} "
                             "observations: give one per observation (or none)")
        chosen = self.resolve_mode(mode, subtask)
        device = self.llm.lm_head.weight.device
        inputs = processor.batch(observations, instructions)
        pixels = {k: v.to(device) for k, v in inputs["pixel_values"].items()}
        ids, mask = inputs["input_ids"].to(device), inputs["attention_mask"].to(device)
        if chosen == "tokens":
            norm = self._token_actions(pixels, ids, mask, token_decoding or self.config.token_decoding)
            n_exec = self.config.token_chunk
        else:
            noise = self._noise(generators, len(observations), device)
            norm = self.sample_action_chunk(pixels, ids, noise=noise, attention_mask=mask).cpu().clamp(-1.0, 1.0)
            n_exec = self.config.execute_steps
        return [self._prediction(processor, row, n_exec, chosen) for row in norm]

    @staticmethod
    def _prediction(processor: SGVLAProcessor, norm: torch.Tensor, n_exec: int, mode: str) -> ActionPrediction:
        chunk = processor.unnormalize(norm)
        return ActionPrediction(action=chunk[0], chunk=chunk, execute=chunk[:n_exec],
                                normalized_chunk=norm.numpy(), mode=mode)

    def _token_actions(self, pixels: Mapping[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor | None,
                       decoding: str) -> torch.Tensor:
        """Normalised actions (B, token_chunk, action_dim) of left-padded prompts, decoded greedily or
        as each dimension's expected bin centre (the greedy token conditions the next in both)."""
        if decoding not in TOKEN_DECODINGS:
            raise SgvlaError(f"token_decoding {decoding!r}: use one of {', '.join(TOKEN_DECODINGS)}")
        tok_ids, logits = self.decode_action_tokens(pixels, ids, return_logits=True, attention_mask=mask)
        if decoding == "greedy":
            norm = self.action_tokenizer.decode(tok_ids.cpu())
        else:
            tok = self.action_tokenizer
            centres = tok.decode(torch.arange(tok.begin, tok.end))
            norm = logits.cpu().float().softmax(-1) @ centres
        return norm.reshape(ids.shape[0], self.config.token_chunk, -1)

    # -- persistence -------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """config.json + model.safetensors + action_decoding.json, written to a temporary folder and
        moved into place (replacing the folder as a whole), so an interrupted save never leaves a
        half-written checkpoint. Extra keyword arguments go to transformers (e.g. `state_dict`).
        The processor is saved by `sgvla.model.save_policy` (both at once) or its own save_pretrained."""

        def write(tmp: Path) -> None:
            super(SGVLAForActionPrediction, self).save_pretrained(str(tmp), **kwargs)
            (tmp / ACTION_DECODING_FILE).write_text(json.dumps(action_decoding(self.config), indent=1))

        write_folder_atomically(save_directory, write)


def write_folder_atomically(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a fresh sibling folder, which then replaces `target` as a whole: a reader
    (or a save interrupted half-way) never sees a mix of two checkpoints."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    write(tmp)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
