"""SG-VLA processor: Qwen chat prompt, action tokens, batching, raw observations -> pixels, and
action un-normalisation.

`SGVLAProcessor` is a transformers `ProcessorMixin` holding the tokenizer and its own settings
(views, history, image size, action bins and token range, action statistics, prompt texts), saved
as `processor_config.json` + the tokenizer files next to the model, so that
`AutoProcessor.from_pretrained(model_dir)` returns it (after `import sgvla.model`, which registers
it). The model holds no tokenizer: the processor turns inputs into tensors and the model's
normalised actions back into env actions (as LeRobot's pi0 processor owns tokenisation and
normalisation).

Prompt (MiniVLA's Qwen format, base model, no BOS):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\nWhat action should the robot take to
    {instruction}?<|im_end|>\\n<|im_start|>assistant\\n  +  13 action tokens  +  <|im_end|><|endoftext|>

The prompt and the answer are tokenized separately and concatenated, so the prefix the model sees in
training is token-for-token the prefix `predict_action` builds. Labels are -100 everywhere except
the 13 action tokens and the 2 end tokens. Images are not tokens here: the model inserts the
projected patches after the first text token.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import ProcessorMixin
from transformers.utils import PROCESSOR_NAME

from sgvla.batching import stack_columns
from sgvla.errors import SgvlaError
from sgvla.model.action_tokenizer import ActionTokenizer
from sgvla.model.configuration_sgvla import PROMPT_TEMPLATE, QWEN_SYSTEM_PROMPT
from sgvla.transforms import check_raw, raw_frames, unnormalize_action
from sgvla.vocab import AUX_TARGETS, VIEWS, view_kind

IGNORE_INDEX = -100
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: Nouns of both task families' instructions, besides the chat prompt's fixed text, that the offline
#: byte tokenizer learns its merges from (`build_byte_tokenizer`).
_MERGE_NOUNS = ("drawer", "fridge", "bowl", "box", "mat", "kitchen counter")
#: The settings a processor shares with the model's config (they must agree: see `check_model`).
SHARED_FIELDS: tuple[str, ...] = ("views", "history", "image_size", "action_dim", "n_action_bins", "token_chunk",
                                  "chunk_size", "action_token_begin", "action_token_layout", "action_stats",
                                  "system_prompt", "prompt_template")
#: from_pretrained keywords that locate files (a Hub revision, the cache, a token...).
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def chat_prompt(instruction: str, system_prompt: str = QWEN_SYSTEM_PROMPT,
                prompt_template: str = PROMPT_TEMPLATE) -> str:
    """The chat prompt up to and including the assistant header (MiniVLA's Qwen format)."""
    text = instruction.strip().rstrip(".").lower()
    user = prompt_template.format(instruction=text)
    return (f"{IM_START}system\n{system_prompt}{IM_END}\n"
            f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n")


def learn_byte_merges(texts: Sequence[str], pre_tokenize: Callable[[str], list]) -> list[tuple[str, str]]:
    """Byte-level BPE merges of `texts` until every pre-tokenized word is one token: each round
    merges the most frequent adjacent pair (ties: the smaller pair), so the result depends on the
    texts alone."""
    words: dict[tuple[str, ...], int] = {}
    for text in texts:
        for word, _ in pre_tokenize(text):
            words[tuple(word)] = words.get(tuple(word), 0) + 1
    merges = []
    while True:
        pairs: dict[tuple[str, str], int] = {}
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        words = {_merge(word, best): count for word, count in words.items()}


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


@functools.cache
def _byte_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """The byte tokenizer's vocabulary and merges, computed without building a tokenizer (a model
    asks for its action-token id at construction and holds no tokenizer)."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from sgvla.instructions import template_instruction
    from sgvla.tasks import SUBTASKS

    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: i for i, b in enumerate(range(256))}
    for special in (END_OF_TEXT, IM_START, IM_END):
        vocab[special] = len(vocab)
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    specials = "|".join(re.escape(t) for t in (END_OF_TEXT, IM_START, IM_END))
    texts = [part for sub in SUBTASKS for noun in _MERGE_NOUNS
             for part in re.split(specials, chat_prompt(template_instruction(sub, noun)))]
    merges = learn_byte_merges(texts, pre.pre_tokenize_str)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return tuple(vocab.items()), tuple(merges)


def build_byte_tokenizer():
    """A Qwen2Tokenizer over the 256 GPT-2 byte symbols, Qwen's chat specials (ids 256-258, pad =
    eos = <|endoftext|>, no BOS, as the real tokenizer) and byte-level BPE merges learned from the
    default chat prompt and instruction templates, built offline; used by the tiny preset and by
    random-init models that have no pretrained tokenizer at hand.

    The merges matter for speed, not meaning: one token per byte made the tiny preset's prompt 166
    tokens, two thirds of its sequence and most of its step (docs/results.md, Speed); with them it
    is 42-51, about a token per word as with Qwen2.5's own tokenizer. Any text still encodes
    (bytes are the fallback) and decodes back exactly.
    """
    from transformers import Qwen2Tokenizer

    vocab, merges = _byte_vocab_and_merges()
    tok = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges))
    tok.add_special_tokens({"additional_special_tokens": [END_OF_TEXT, IM_START, IM_END]})
    return tok


def byte_tokenizer_action_begin() -> int:
    """Id of `<|extra_0|>` in `build_byte_tokenizer()` (its bytes, specials and merges): where a
    random-init model puts its action tokens when its config does not say."""
    return len(_byte_vocab_and_merges()[0])


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


class SGVLAProcessor(ProcessorMixin):
    """Builds model inputs from dataset samples (training) and raw observations (inference), and
    turns the model's normalised actions into env actions.

    Its settings are its own (saved in processor_config.json), because the processor is what a
    client needs to feed and decode a model without building it; they are the model config's
    values (`from_config`) and `check_model` refuses a model whose config disagrees, so an edited
    file cannot silently encode or decode actions differently from how the weights were trained.
    `tokenizer=None` takes the offline byte tokenizer (`build_byte_tokenizer`).
    """

    def __init__(self, tokenizer=None, views: Sequence[str] | None = None, history: int = 0, image_size: int = 224,
                 action_dim: int = 13, n_action_bins: int = 255, token_chunk: int = 1, chunk_size: int = 8,
                 action_token_begin: int | None = None, action_token_layout: str = "sgvla",
                 action_stats: dict[str, list[float]] | None = None,
                 system_prompt: str = QWEN_SYSTEM_PROMPT, prompt_template: str = PROMPT_TEMPLATE):
        super().__init__(tokenizer if tokenizer is not None else build_byte_tokenizer())
        self.views, self.history, self.image_size = list(views or VIEWS), int(history), int(image_size)
        self.action_dim, self.n_action_bins = int(action_dim), int(n_action_bins)
        self.token_chunk, self.chunk_size = int(token_chunk), int(chunk_size)
        self.action_token_layout = action_token_layout
        self.action_stats = {k: [float(x) for x in v] for k, v in action_stats.items()} if action_stats else None
        self.system_prompt, self.prompt_template = system_prompt, prompt_template
        self._validate()
        self.action_token_begin = self._action_token_begin(action_token_begin)
        self.action_tokenizer = ActionTokenizer(self.action_token_begin, self.n_action_bins, self.action_token_layout)
        self.end_ids, self.pad_id = self._end_and_pad_ids()

    @classmethod
    def from_config(cls, config, tokenizer=None) -> SGVLAProcessor:
        """The processor of a model config (the byte tokenizer if none is given).

        A config that does not yet say where the action tokens are (`action_token_begin=None`)
        takes the tokenizer's, so a model built from it afterwards agrees with this processor.
        """
        proc = cls(tokenizer, **{k: getattr(config, k) for k in SHARED_FIELDS})
        if config.action_token_begin is None:
            config.action_token_begin = proc.action_token_begin
        proc.check_model(config)
        return proc

    def _validate(self) -> None:
        bad = [v for v in self.views if v not in VIEWS]
        if bad or not self.views or self.history < 0 or not 1 <= self.token_chunk <= self.chunk_size:
            raise SgvlaError(f"processor settings views={self.views}, history={self.history}, token_chunk="
                             f"{self.token_chunk}, chunk_size={self.chunk_size} are invalid: build it from the "
                             "model's config (SGVLAProcessor.from_config)")
        for key in ("q01", "q99"):
            if self.action_stats is not None and len(self.action_stats.get(key, [])) != self.action_dim:
                raise SgvlaError(f"processor action_stats[{key!r}] must hold {self.action_dim} values (the "
                                 "dataset's meta/stats.json 'action' entry)")

    def _action_token_begin(self, want: int | None) -> int:
        """The id of `<|extra_0|>` (added to the tokenizer if missing), checked against `want`."""
        n_ids = ActionTokenizer.n_ids(self.n_action_bins, self.action_token_layout)
        begin = ensure_action_tokens(self.tokenizer, n_ids)
        if want is not None and want != begin:
            raise SgvlaError(f"the tokenizer puts <|extra_0|> at id {begin} but the model was trained with "
                             f"action tokens from id {want}: load the tokenizer saved with the checkpoint")
        return begin

    def _end_and_pad_ids(self) -> tuple[list[int], int]:
        tok = self.tokenizer
        specials = tok.convert_tokens_to_ids([IM_END, END_OF_TEXT])
        names = tok.convert_ids_to_tokens([i if i is not None else 0 for i in specials])
        if names != [IM_END, END_OF_TEXT]:
            raise SgvlaError("the tokenizer lacks Qwen's <|im_end|>/<|endoftext|> tokens: use a Qwen2 tokenizer")
        return list(specials), tok.pad_token_id if tok.pad_token_id is not None else specials[1]

    # -- the model this processor feeds --------------------------------------------------------
    @property
    def n_action_tokens(self) -> int:
        return self.token_chunk * self.action_dim

    def check_model(self, config) -> None:
        """Refuse a model config that this processor would feed or decode differently from its training."""
        differ = [k for k in SHARED_FIELDS if getattr(config, k) != getattr(self, k)]
        if differ:
            raise SgvlaError(f"the processor and the model config disagree on {', '.join(differ)}: load both from "
                             "the same checkpoint folder, or rebuild the processor with "
                             "SGVLAProcessor.from_config(model.config, processor.tokenizer)")
        if len(self.tokenizer) > config.text_config.vocab_size:
            raise SgvlaError(f"the tokenizer has {len(self.tokenizer)} tokens but the LLM only "
                             f"{config.text_config.vocab_size} embedding rows: resize the LLM's embeddings")

    # -- text --------------------------------------------------------------------------------
    def prompt(self, instruction: str) -> str:
        """The chat prompt up to and including the assistant header (what inference feeds)."""
        return chat_prompt(instruction, self.system_prompt, self.prompt_template)

    def prompt_ids(self, instruction: str) -> list[int]:
        if not isinstance(instruction, str) or not instruction.strip():
            raise SgvlaError(f"instruction must be a non-empty string, got {instruction!r}")
        return self.tokenizer(self.prompt(instruction), add_special_tokens=False)["input_ids"]

    def answer_ids(self, action: Any) -> list[int]:
        """Normalised actions ((token_chunk,) action_dim) -> action token ids + the two end tokens."""
        a = torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(-1)
        if a.numel() != self.n_action_tokens:
            raise SgvlaError(f"sample answer has {a.numel()} values but the model predicts "
                             f"{self.token_chunk} x {self.action_dim}")
        return self.action_tokenizer.encode(a).tolist() + self.end_ids

    def answer_actions(self, sample: Mapping[str, Any]) -> Any:
        """What a sample's answer encodes: its action, or the first `token_chunk` of its chunk."""
        k = self.token_chunk
        if k == 1:
            return sample["action"]
        if "action_chunk" not in sample:
            raise SgvlaError(f"token_chunk={k} needs the sample's action_chunk (the data pipeline's chunk_size "
                             "future actions)")
        return np.asarray(sample["action_chunk"])[:k]

    # -- batching ----------------------------------------------------------------------------
    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Dataset samples -> a batch dict that `model(**batch)` accepts (right padding).

        Sample keys: pixel_values {view: raw frames (T, H, W[, 3])}, instruction, action (13,)
        normalised; optional action_chunk (H, 13) + action_chunk_pad (H,) bool, aux {key: target,
        bool or float} + aux_valid {key: bool} (keys of AUX_TARGETS), subtask. Batch keys:
        input_ids, attention_mask, labels (B, L); pixel_values {view: (B, T, H, W[, 3])}; action
        (B, 13); action_chunk (B, H, 13); action_chunk_pad (B, H); aux {key: (B, ...)}; aux_valid
        {key: (B,) bool}; subtask list.
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
        check_raw(batch["pixel_values"], self.views, self.history + 1)
        if "action_chunk" in batch:
            chunk = batch["action_chunk"]
            if tuple(chunk.shape[1:]) != (self.chunk_size, self.action_dim):
                raise SgvlaError(f"action_chunk is {tuple(chunk.shape[1:])} per sample but the model expects "
                                 f"({self.chunk_size}, {self.action_dim}): set the pipeline's "
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
            cols[("pixel_values", k)] = [torch.as_tensor(s["pixel_values"][k]) for s in samples]
        if "action_chunk" in samples[0]:
            cols[("action_chunk",)] = [_float_tensor(s["action_chunk"]) for s in samples]
            if samples[0].get("action_chunk_pad") is not None:
                cols[("action_chunk_pad",)] = [torch.as_tensor(s["action_chunk_pad"]).bool() for s in samples]
        if "aux" in samples[0]:
            for k in (k for k in AUX_TARGETS if k in samples[0]["aux"]):
                cols[("aux", k)] = [_aux_tensor(s["aux"][k]) for s in samples]
                cols[("aux_valid", k)] = [torch.tensor(bool(np.asarray(s.get("aux_valid", {}).get(k, True))))
                                          for s in samples]
        return cols

    # -- observations ------------------------------------------------------------------------
    def observation_pixels(self, observation: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Raw observation -> {view: uint8 (T, H, W, 3) | uint16 (T, H, W)}, T = history + 1 frames oldest
        first: the data pipeline's representation (`transforms.raw_frames`); the model converts it.

        `observation[view]`: uint8 (H, W, 3) for *_rgb, depth in mm (H, W) or (H, W, 1) for *_depth
        (clipped to uint16 as the dataset stores it), every view at one resolution.
        `observation["history"]` (only read when history = k > 0): list of previous observations,
        oldest first, each a dict with the same view keys; the last k are used and a shorter list
        (episode start) is padded by repeating its oldest frame (or the current one).
        """
        missing = [v for v in self.views if v not in observation]
        if missing:
            raise SgvlaError(f"observation lacks view(s) {missing}: this model was trained with views={self.views}")
        past = list(observation.get("history") or [])[-self.history:] if self.history else []
        if self.history:
            oldest = past[0] if past else observation
            past = [oldest] * (self.history - len(past)) + past
        frames = [*past, observation]
        for frame in frames:
            for view in self.views:
                if view not in frame:
                    raise SgvlaError(f"a history frame lacks view {view!r}: give every frame views={self.views}")
                _checked(frame[view], view)
        return raw_frames(frames, self.views)

    def __call__(self, observation: Mapping[str, Any], instruction: str) -> dict[str, Any]:
        """One raw observation + instruction -> the model's inference inputs, batch of one:
        {"pixel_values": {view: (1, T, H, W[, 3])}, "input_ids": (1, L)}."""
        pixels = {k: v.unsqueeze(0) for k, v in self.observation_pixels(observation).items()}
        return {"pixel_values": pixels, "input_ids": torch.tensor([self.prompt_ids(instruction)])}

    def batch(self, observations: Sequence[Mapping[str, Any]], instructions: Sequence[str]) -> dict[str, Any]:
        """Several raw observations, one instruction each -> inference inputs of a batch:
        {"pixel_values": {view: (B, T, ...) raw frames}, "input_ids": (B, L), "attention_mask": (B, L)}.
        Prompts are LEFT-padded (unlike `collate`'s training batches): every row then ends at its
        assistant header, where the model appends the answer tokens of all rows at once."""
        if not observations or len(observations) != len(instructions):
            raise SgvlaError(f"batch() needs one instruction per observation (got {len(observations)} observations "
                             f"and {len(instructions)} instructions)")
        ids = [self.prompt_ids(text) for text in instructions]
        width = max(map(len, ids))
        pixels = [self.observation_pixels(o) for o in observations]
        return {"pixel_values": {v: torch.stack([p[v] for p in pixels]) for v in self.views},
                "input_ids": torch.tensor([[self.pad_id] * (width - len(r)) + r for r in ids]),
                "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])}

    # -- actions -----------------------------------------------------------------------------
    def unnormalize(self, normalized: torch.Tensor | np.ndarray) -> np.ndarray:
        """The model's actions in [-1, 1] (..., action_dim) -> env actions, float32 (q01/q99 of the
        dataset's statistics, as the data pipeline normalised them)."""
        stats = self.action_stats
        if stats is None:
            raise SgvlaError("the processor has no action_stats, so actions cannot be un-normalised: set the "
                             "model config's action_stats to the dataset's meta/stats.json 'action' entry and "
                             "rebuild the processor with SGVLAProcessor.from_config")
        a = torch.as_tensor(np.asarray(normalized)).double()
        return unnormalize_action(a, stats["q01"], stats["q99"]).float().numpy()

    # -- persistence -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> SGVLAProcessor:
        """processor_config.json + the tokenizer of a saved folder (or Hub id).

        Folders saved before the processor had its own file (config.json, weights and maybe the
        tokenizer files) still load: the processor is built from their config.json with their
        tokenizer, or the byte tokenizer when they have none (what such a model was built with).
        """
        path = str(pretrained_model_name_or_path)
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        if _has_file(path, PROCESSOR_NAME, hub):
            return super().from_pretrained(path, **kwargs)
        from transformers import AutoTokenizer

        from sgvla.model.configuration_sgvla import SGVLAConfig

        config = SGVLAConfig.from_pretrained(path, **hub)
        tokenizer = AutoTokenizer.from_pretrained(path, **hub) if _has_file(path, TOKENIZER_FILES[1], hub) else None
        return cls.from_config(config, tokenizer)


def _has_file(path: str, name: str, hub: dict) -> bool:
    """Whether a local folder or Hub repo holds `name` (no exception for a missing file)."""
    if Path(path).is_dir():
        return (Path(path) / hub.get("subfolder", "") / name).is_file()
    from transformers.utils import cached_file

    return cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **hub) is not None


#: What turns the model's outputs into actions, recorded when the weights are saved: an edited
#: config.json (other bins, another token range or other statistics) would decode every action
#: differently from how the weights were trained, without any error.
ACTION_DECODING_FILE = "action_decoding.json"


def action_decoding(config) -> dict:
    stats = config.action_stats or {}
    return {"action_dim": config.action_dim, "n_action_bins": config.n_action_bins,
            "action_token_layout": config.action_token_layout, "token_chunk": config.token_chunk,
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


def _aux_tensor(x: Any) -> torch.Tensor:
    """Boolean targets (the data pipeline's masks) stay bool, a quarter of float32's bytes out of
    DataLoader workers (the loss takes them as floats); any other target becomes float32."""
    t = torch.as_tensor(x)
    return t if t.dtype == torch.bool else _float_tensor(x)
