"""Fused DINOv2 + SigLIP patch features and the projector into the LLM (Prismatic's 'dinosiglip').

Prismatic reads each tower's *second-to-last* block output (no final norm, prefix tokens dropped)
and concatenates the two per patch. We build each tower one block short and with the final norm
replaced by identity, so the tower's `last_hidden_state` is exactly that feature: the unused last
block and norm cost no compute, no memory and leave no parameter without a gradient (which DDP
would reject). The tower's config in `SGVLAConfig` keeps the full depth, so a pretrained
checkpoint's description stays honest and `load_components` simply skips the last block's weights.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from transformers import Dinov2WithRegistersModel, PreTrainedConfig, SiglipVisionModel


def truncated(config: PreTrainedConfig) -> PreTrainedConfig:
    """Copy of a tower config without its last block."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = config.num_hidden_layers - 1
    return cfg


class FusedVisionBackbone(nn.Module):
    """Images (N, 3, S, S) twice normalised -> fused patch features (N, (S/14)^2, D_dino + D_siglip)."""

    def __init__(self, dino_config: PreTrainedConfig, siglip_config: PreTrainedConfig):
        super().__init__()
        self.dino = Dinov2WithRegistersModel(truncated(dino_config))
        self.dino.layernorm = nn.Identity()
        # The mask token is only used for masked-image modelling; freezing it keeps DDP happy.
        self.dino.embeddings.mask_token.requires_grad_(False)
        self.siglip = SiglipVisionModel(truncated(siglip_config))
        self.siglip.post_layernorm = nn.Identity()
        self.n_prefix = 1 + dino_config.num_register_tokens

    def forward(self, dino_pixels: torch.Tensor, siglip_pixels: torch.Tensor) -> torch.Tensor:
        d = self.dino(pixel_values=dino_pixels).last_hidden_state[:, self.n_prefix:]
        s = self.siglip(pixel_values=siglip_pixels).last_hidden_state
        return torch.cat([d, s], dim=-1)


class FusedMLPProjector(nn.Module):
    """Prismatic's fused GELU MLP: D -> 4D -> GELU -> d -> GELU -> d (d = LLM width)."""

    def __init__(self, vision_dim: int, llm_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 4 * vision_dim
        self.net = nn.Sequential(nn.Linear(vision_dim, hidden), nn.GELU(), nn.Linear(hidden, llm_dim),
                                 nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
