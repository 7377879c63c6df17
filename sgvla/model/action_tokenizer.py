"""Discrete action tokens: each normalised action dimension is one of `n_bins` uniform bins on [-1, 1].

Bin i covers [-1 + i w, -1 + (i + 1) w) with w = 2 / n_bins and decodes to its centre, so a round
trip is off by at most w / 2. The default is 255 bins: with an odd count 0 is a bin centre, so a
"hold still" action decodes to exactly 0 (with 256 it decodes to -w/2, a drift that delta-joint
control integrates step after step; MiniVLA's 256 bin edges likewise give 255 centres with 0 among
them).

Two token layouts map bins to the tokenizer's `<|extra_i|>` tokens (contiguous, otherwise unused,
so actions never collide with text; `begin` is the id of `<|extra_0|>`):

* "sgvla" (default): bin i is token `begin + i` (`n_bins` ids).
* "minivla": MiniVLA/OpenVLA's `extra_action_tokenizer` with 255 bins (256 edges): bin i is token
  `begin + n_bins - i`, so larger actions get smaller ids, and an action of exactly +1 (common: the
  q99 normalisation clips to it) is the extra token `begin`, decoded as the top bin (`n_bins + 1`
  ids). Edges and centres are computed the way MiniVLA computes them (float64 linspace,
  `digitize`), so a checkpoint imported with `sgvla import-minivla` reads and writes its action
  tokens exactly as it was trained.
"""

from __future__ import annotations

import numpy as np
import torch

from sgvla.errors import SgvlaError
from sgvla.transforms import uniform_bin, uniform_bin_centre

#: Token layouts `ActionTokenizer` understands (see the module doc).
ACTION_TOKEN_LAYOUTS: tuple[str, ...] = ("sgvla", "minivla")


def _tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


class ActionTokenizer:
    """Maps normalised actions in [-1, 1] to token ids and back."""

    low, high = -1.0, 1.0

    def __init__(self, begin: int, n_bins: int = 255, layout: str = "sgvla"):
        if layout not in ACTION_TOKEN_LAYOUTS:
            raise SgvlaError(f"action token layout {layout!r} is unknown: use one of {', '.join(ACTION_TOKEN_LAYOUTS)}")
        self.begin = int(begin)
        self.n_bins = int(n_bins)
        self.layout = layout
        self.width = (self.high - self.low) / self.n_bins
        # MiniVLA's exact edges: float64 linspace, centres as midpoints of neighbouring edges.
        edges = np.linspace(self.low, self.high, self.n_bins + 1)
        self._edges = torch.from_numpy(edges)
        self._centres = torch.from_numpy((edges[:-1] + edges[1:]) / 2.0)

    @classmethod
    def from_config(cls, config) -> ActionTokenizer:
        """The tokenizer an `SGVLAConfig` describes (begin, bin count and layout)."""
        return cls(config.action_token_begin, config.n_action_bins, getattr(config, "action_token_layout", "sgvla"))

    @staticmethod
    def n_ids(n_bins: int, layout: str = "sgvla") -> int:
        """Token ids a layout uses for `n_bins` bins (MiniVLA's has one more: an action of exactly +1)."""
        return n_bins + 1 if layout == "minivla" else n_bins

    @property
    def n_tokens(self) -> int:
        return self.n_ids(self.n_bins, self.layout)

    @property
    def end(self) -> int:
        """One past the last action token id."""
        return self.begin + self.n_tokens

    def to_bins(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Bin index (long) of each value; values outside [low, high] go to the end bins."""
        a = _tensor(actions).double()
        if self.layout == "minivla":
            return self._digitize(a).sub_(1).clamp_(0, self.n_bins - 1)
        return uniform_bin(a, self.n_bins).long().clamp_(0, self.n_bins - 1)

    def _digitize(self, a: torch.Tensor) -> torch.Tensor:
        """numpy's `digitize(clip(a, low, high), edges)`: 1..n_bins, and n_bins + 1 for exactly `high`."""
        return torch.bucketize(a.clamp(self.low, self.high), self._edges, right=True)

    def encode(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Actions (..., D) -> token ids (..., D)."""
        if self.layout == "minivla":
            return self.end - self._digitize(_tensor(actions).double())
        return self.to_bins(actions) + self.begin

    def decode(self, token_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Token ids (..., D) -> bin centres (..., D) as float32; non-action ids are an error."""
        ids = _tensor(token_ids).long()
        if bool((~self.is_action(ids)).any()):
            raise SgvlaError(f"token ids outside the action range {self.begin}..{self.end - 1} cannot be "
                             "decoded to actions: the model and its tokenizer disagree")
        if self.layout == "minivla":
            return self._centres[(self.begin + self.n_bins - ids).clamp(0, self.n_bins - 1)].float()
        return uniform_bin_centre((ids - self.begin).double(), self.n_bins).float()

    def is_action(self, token_ids: torch.Tensor) -> torch.Tensor:
        return (token_ids >= self.begin) & (token_ids < self.end)
