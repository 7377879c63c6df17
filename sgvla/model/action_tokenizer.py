"""Discrete action tokens: each normalised action dimension is one of `n_bins` uniform bins on [-1, 1].

Bin i covers [-1 + i w, -1 + (i + 1) w) with w = 2 / n_bins and decodes to its centre, so a round
trip is off by at most w / 2. The default is 255 bins: with an odd count 0 is a bin centre, so a
"hold still" action decodes to exactly 0 (with 256 it decodes to -w/2, a drift that delta-joint
control integrates step after step; MiniVLA's 256 bin edges likewise give 255 centres with 0 among
them). Bin i is the LLM token `begin + i`, where `begin` is the id of the tokenizer's
`<|extra_0|>`: the added `<|extra_i|>` tokens are contiguous and otherwise unused, so actions never
collide with text (MiniVLA's choice for Qwen).
"""

from __future__ import annotations

import numpy as np
import torch

from sgvla.errors import SgvlaError


class ActionTokenizer:
    """Maps normalised actions in [-1, 1] to token ids and back."""

    low, high = -1.0, 1.0

    def __init__(self, begin: int, n_bins: int = 255):
        self.begin = int(begin)
        self.n_bins = int(n_bins)
        self.width = (self.high - self.low) / self.n_bins

    @property
    def end(self) -> int:
        """One past the last action token id."""
        return self.begin + self.n_bins

    def to_bins(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Bin index (long) of each value; values outside [low, high] go to the end bins."""
        a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions)
        idx = torch.floor((a.double() - self.low) / self.width).long()
        return idx.clamp_(0, self.n_bins - 1)

    def encode(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Actions (..., D) -> token ids (..., D)."""
        return self.to_bins(actions) + self.begin

    def decode(self, token_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Token ids (..., D) -> bin centres (..., D) as float32; non-action ids are an error."""
        ids = torch.as_tensor(np.asarray(token_ids) if not isinstance(token_ids, torch.Tensor) else token_ids)
        bins = ids.long() - self.begin
        if bool(((bins < 0) | (bins >= self.n_bins)).any()):
            raise SgvlaError(f"token ids outside the action range {self.begin}..{self.end - 1} cannot be "
                             "decoded to actions: the model and its tokenizer disagree")
        return (self.low + (bins.double() + 0.5) * self.width).float()

    def is_action(self, token_ids: torch.Tensor) -> torch.Tensor:
        return (token_ids >= self.begin) & (token_ids < self.end)
