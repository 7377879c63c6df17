"""SG-VLA processor: Qwen chat prompt, action tokens, batching, and raw observations -> pixels.

Prompt (MiniVLA's Qwen format, base model, no BOS):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\nWhat action should the robot take to
    {instruction}?<|im_end|>\\n<|im_start|>assistant\\n  +  13 action tokens  +  <|im_end|><|endoftext|>

The prompt and the answer are tokenized separately and concatenated, so the prefix the model sees in
training is token-for-token the prefix `predict_action` builds. Labels are -100 everywhere except
the 13 action tokens and the 2 end tokens. Images are not tokens here: the model inserts the
projected patches after the first text token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgvla.batching import stack_columns
from sgvla.errors import SgvlaError
from sgvla.model.action_tokenizer import ActionTokenizer
from sgvla.transforms import normalize_for_towers, resize, to_unit_image
from sgvla.vocab import AUX_TARGETS, view_kind

IGNORE_INDEX = -100
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def build_byte_tokenizer():
    """A Qwen2Tokenizer over the 256 GPT-2 byte symbols plus Qwen's chat specials, built offline.

    Same semantics as the real Qwen tokenizer (no BOS, pad = eos = <|endoftext|>, `vocab_size`
    excludes added tokens) with 259 ids before the action tokens; used by the tiny preset and by
    random-init models that have no pretrained tokenizer at hand.
    """
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    tok = Qwen2Tokenizer(vocab={byte_chars[b]: i for i, b in enumerate(range(256))}, merges=[])
    tok.add_special_tokens({"additional_special_tokens": [END_OF_TEXT, IM_START, IM_END]})
    return tok


def ensure_action_tokens(tokenizer, n_bins: int) -> int:
    """Add `<|extra_0..n-1|>` if missing; return the id of `<|extra_0|>` (they must be contiguous)."""
    names = [f"<|extra_{i}|>" for i in range(n_bins)]
    vocab = tokenizer.get_vocab()
    missing = [n for n in names if n not in vocab]
    if missing:
        tokenizer.add_tokens(missing)
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(ids[0], ids[0] + n_bins)):
        raise SgvlaError("the tokenizer's <|extra_i|> tokens are not contiguous ids: use the Qwen2.5 tokenizer "
                         "(or one without <|extra_*|> tokens) so the action tokens can be added in order")
    return ids[0]


class SGVLAProcessor:
    """Builds model inputs from dataset samples (training) and raw observations (inference)."""

    def __init__(self, config, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        begin = ensure_action_tokens(tokenizer, config.n_action_bins)
        if config.action_token_begin is None:
            config.action_token_begin = begin
        elif config.action_token_begin != begin:
            raise SgvlaError(f"the tokenizer puts <|extra_0|> at id {begin} but the model was trained with "
                             f"action tokens from id {config.action_token_begin}: load the tokenizer saved "
                             "with the checkpoint")
        if len(tokenizer) > config.text_config.vocab_size:
            raise SgvlaError(f"the tokenizer has {len(tokenizer)} tokens but the LLM only "
                             f"{config.text_config.vocab_size} embedding rows: resize the LLM's embeddings")
        self.action_tokenizer = ActionTokenizer(begin, config.n_action_bins)
        specials = tokenizer.convert_tokens_to_ids([IM_END, END_OF_TEXT])
        names = tokenizer.convert_ids_to_tokens([i if i is not None else 0 for i in specials])
        if names != [IM_END, END_OF_TEXT]:
            raise SgvlaError("the tokenizer lacks Qwen's <|im_end|>/<|endoftext|> tokens: use a Qwen2 tokenizer")
        self.end_ids: list[int] = list(specials)
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else specials[1]

    # -- text --------------------------------------------------------------------------------
    def prompt(self, instruction: str) -> str:
        """The chat prompt up to and including the assistant header (what inference feeds)."""
        text = instruction.strip().rstrip(".").lower()
        user = self.config.prompt_template.format(instruction=text)
        return (f"{IM_START}system\n{self.config.system_prompt}{IM_END}\n"
                f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n")

    def prompt_ids(self, instruction: str) -> list[int]:
        if not isinstance(instruction, str) or not instruction.strip():
            raise SgvlaError(f"instruction must be a non-empty string, got {instruction!r}")
        return self.tokenizer(self.prompt(instruction), add_special_tokens=False)["input_ids"]

    def answer_ids(self, action: Any) -> list[int]:
        """Normalised actions ((token_chunk,) action_dim) -> action token ids + the two end tokens."""
        a = torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(-1)
        if a.numel() != self.config.n_action_tokens:
            raise SgvlaError(f"sample answer has {a.numel()} values but the model predicts "
                             f"{self.config.token_chunk} x {self.config.action_dim}")
        return self.action_tokenizer.encode(a).tolist() + self.end_ids

    def answer_actions(self, sample: Mapping[str, Any]) -> Any:
        """What a sample's answer encodes: its action, or the first `token_chunk` of its chunk."""
        k = self.config.token_chunk
        if k == 1:
            return sample["action"]
        if "action_chunk" not in sample:
            raise SgvlaError(f"token_chunk={k} needs the sample's action_chunk (the data pipeline's chunk_size "
                             "future actions)")
        return np.asarray(sample["action_chunk"])[:k]

    # -- batching ----------------------------------------------------------------------------
    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Dataset samples -> a batch dict that `model(**batch)` accepts (right padding).

        Sample keys: pixel_values {"dino", "siglip"} (V, 3, S, S), instruction, action (13,)
        normalised; optional action_chunk (H, 13) + action_chunk_pad (H,) bool, aux {key: target} +
        aux_valid {key: bool} (keys of AUX_TARGETS), subtask. Batch keys: input_ids, attention_mask,
        labels (B, T); pixel_values (B, V, 3, S, S) each; action (B, 13); action_chunk (B, H, 13);
        action_chunk_pad (B, H); aux {key: (B, ...)}; aux_valid {key: (B,) bool}; subtask list.
        """
        if not samples:
            raise SgvlaError("collate() got an empty list of samples")
        for s in samples:
            missing = [k for k in ("pixel_values", "instruction", "action") if k not in s]
            if missing:
                raise SgvlaError(f"a sample lacks {missing}: the data pipeline must give pixel_values, "
                                 "instruction and a normalised action")
        ids, labels = [], []
        for s in samples:
            p, a = self.prompt_ids(s["instruction"]), self.answer_ids(self.answer_actions(s))
            ids.append(p + a)
            labels.append([IGNORE_INDEX] * len(p) + a)
        try:
            cols = self._columns(samples, ids, labels)
        except KeyError as e:
            raise SgvlaError(f"samples differ in their keys: one lacks {e} that the first has") from None
        batch = stack_columns(cols)
        self._check_pixels(batch["pixel_values"])
        if "action_chunk" in batch:
            chunk = batch["action_chunk"]
            if tuple(chunk.shape[1:]) != (self.config.chunk_size, self.config.action_dim):
                raise SgvlaError(f"action_chunk is {tuple(chunk.shape[1:])} per sample but the model expects "
                                 f"({self.config.chunk_size}, {self.config.action_dim}): set the pipeline's "
                                 "chunk size to the model's chunk_size")
            if "action_chunk_pad" not in batch:
                batch["action_chunk_pad"] = torch.zeros(chunk.shape[:2], dtype=torch.bool)
        if "subtask" in samples[0]:
            batch["subtask"] = [s["subtask"] for s in samples]
        return batch

    def _columns(self, samples: Sequence[Mapping[str, Any]], ids: list[list[int]],
                 labels: list[list[int]]) -> dict[tuple[str, ...], list[torch.Tensor]]:
        """Per-sample tensors of every batch key, for `stack_columns` (one buffer per batch)."""
        width = max(map(len, ids))
        cols: dict[tuple[str, ...], list[torch.Tensor]] = {
            ("input_ids",): [torch.tensor(r + [self.pad_id] * (width - len(r))) for r in ids],
            ("attention_mask",): [torch.tensor([1] * len(r) + [0] * (width - len(r))) for r in ids],
            ("labels",): [torch.tensor(r + [IGNORE_INDEX] * (width - len(r))) for r in labels],
            ("action",): [_float_tensor(s["action"]) for s in samples],
        }
        for k in samples[0]["pixel_values"]:
            cols[("pixel_values", k)] = [_pixel_tensor(s["pixel_values"][k]) for s in samples]
        if "action_chunk" in samples[0]:
            cols[("action_chunk",)] = [_float_tensor(s["action_chunk"]) for s in samples]
            if samples[0].get("action_chunk_pad") is not None:
                cols[("action_chunk_pad",)] = [torch.as_tensor(s["action_chunk_pad"]).bool() for s in samples]
        if "aux" in samples[0]:
            for k in (k for k in AUX_TARGETS if k in samples[0]["aux"]):
                cols[("aux", k)] = [_float_tensor(s["aux"][k]) for s in samples]
                cols[("aux_valid", k)] = [torch.tensor(bool(np.asarray(s.get("aux_valid", {}).get(k, True))))
                                          for s in samples]
        return cols

    def _check_pixels(self, pixels: Mapping[str, torch.Tensor]) -> None:
        c = self.config
        want = c.pixel_shape
        for k, v in pixels.items():
            if k == "unit" and tuple(v.shape[1:3]) == want[:2]:
                continue  # resized on the model's device (encode_images)
            if tuple(v.shape[1:]) != want:
                raise SgvlaError(f"pixel_values[{k!r}] is {tuple(v.shape[1:])} per sample but the model expects "
                                 f"{want}: (history+1)*len(views) = ({c.history}+1)*{len(c.views)} images for "
                                 f"views={c.views} at {c.image_size} px; build the data pipeline from the "
                                 "model's config")

    # -- observations ------------------------------------------------------------------------
    def observation_pixels(self, observation: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Raw observation -> {"dino", "siglip"}: (V, 3, S, S) float32, frame-major, views in config order.

        `observation[view]`: uint8 (H, W, 3) for *_rgb, depth in mm (H, W) or (H, W, 1) for *_depth.
        `observation["history"]` (only read when config.history = k > 0): list of previous
        observations, oldest first, each a dict with the same view keys; the last k are used and a
        shorter list (episode start) is padded by repeating its oldest frame (or the current one).
        """
        c = self.config
        missing = [v for v in c.views if v not in observation]
        if missing:
            raise SgvlaError(f"observation lacks view(s) {missing}: this model was trained with views={c.views}")
        past = list(observation.get("history") or [])[-c.history:] if c.history else []
        if c.history:
            oldest = past[0] if past else observation
            past = [oldest] * (c.history - len(past)) + past
        images = []
        for frame in [*past, observation]:
            for view in c.views:
                if view not in frame:
                    raise SgvlaError(f"a history frame lacks view {view!r}: give every frame views={c.views}")
                images.append(resize(to_unit_image(_checked(frame[view], view), view_kind(view)), c.image_size))
        return normalize_for_towers(torch.stack(images))

    # -- persistence -------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(str(path))
        (Path(path) / ACTION_DECODING_FILE).write_text(json.dumps(action_decoding(self.config), indent=1))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config) -> SGVLAProcessor:
        """The tokenizer saved next to a checkpoint; the byte tokenizer if the folder has none."""
        from transformers import AutoTokenizer

        p = Path(path)
        check_action_decoding(p, config)
        if p.is_dir() and not any((p / f).exists() for f in TOKENIZER_FILES):
            return cls(config, build_byte_tokenizer())
        return cls(config, AutoTokenizer.from_pretrained(str(path)))


#: What turns the model's outputs into actions, recorded when the weights are saved: an edited
#: config.json (other bins, another token range or other statistics) would decode every action
#: differently from how the weights were trained, without any error.
ACTION_DECODING_FILE = "action_decoding.json"


def action_decoding(config) -> dict:
    stats = config.action_stats or {}
    return {"action_dim": config.action_dim, "n_action_bins": config.n_action_bins,
            "token_chunk": config.token_chunk,
            "action_token_begin": config.action_token_begin,
            "action_q01": stats.get("q01"), "action_q99": stats.get("q99")}


def check_action_decoding(path: Path, config) -> None:
    """The checkpoint's config agrees with the decoding recorded with its weights (if recorded)."""
    record = path / ACTION_DECODING_FILE
    if not record.is_file():
        return  # checkpoints from before the record, and Hub folders without it
    try:
        saved = json.loads(record.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SgvlaError(f"{record} is not valid JSON ({e}): restore the checkpoint folder as it was saved") from None
    now = action_decoding(config)
    changed = [k for k in saved if k in now and now[k] != saved[k]]
    if changed:
        raise SgvlaError(f"{path}/config.json disagrees with the weights on {', '.join(changed)} (recorded in "
                         f"{record.name} when they were saved): the actions would be decoded differently from "
                         "how the model was trained; restore the checkpoint's own config.json")


def _checked(array: Any, view: str) -> Any:
    a = array if isinstance(array, torch.Tensor) else np.asarray(array)
    ok = (a.ndim == 3 and a.shape[-1] == 3) if view_kind(view) == "rgb" else \
        (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 1))
    if not ok:
        want = "uint8 (H, W, 3)" if view_kind(view) == "rgb" else "millimetres (H, W) or (H, W, 1)"
        raise SgvlaError(f"observation[{view!r}] has shape {tuple(a.shape)}; expected {want}")
    return a


def _float_tensor(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()


def _pixel_tensor(x: Any) -> torch.Tensor:
    """Half floats stay half (the "unit16" format: half the bytes out of DataLoader workers)."""
    t = torch.as_tensor(x)
    return t if t.dtype in (torch.float16, torch.bfloat16) else t.float()
