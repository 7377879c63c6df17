"""Observation and action transforms shared by training (dataset pipeline) and evaluation.

Kept in one place so that closed-loop evaluation feeds the model exactly what training did.
Images are resized in torch (bicubic on float), never through 8-bit PIL, which would quantise
the depth encoding; no torchvision needed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DINO_MEAN = (0.485, 0.456, 0.406)  # ImageNet, DINOv2
DINO_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def depth_to_unit(depth_mm: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 1: p = 1 - tanh(depth_mm / 1000), in (0, 1]; near is bright."""
    return 1.0 - torch.tanh(depth_mm.float() / 1000.0)


def to_unit_image(x: torch.Tensor | np.ndarray, kind: str) -> torch.Tensor:
    """One view -> float (..., 3, H, W) in [0, 1].

    kind "rgb": uint8 (..., H, W, 3); kind "depth": millimetres (..., H, W) or (..., H, W, 1),
    mapped with Eq. 1 and replicated to 3 channels.
    """
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if kind == "rgb":
        return t.movedim(-1, -3).float() / 255.0
    if kind == "depth":
        if t.shape[-1] == 1:
            t = t[..., 0]
        if t.dtype == torch.uint16:
            t = t.int()
        p = depth_to_unit(t).unsqueeze(-3)
        return p.expand(*p.shape[:-3], 3, *p.shape[-2:])
    raise ValueError(f"unknown view kind {kind!r}")


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of (..., C, H, W) floats to size x size (Prismatic's 'resize-naive')."""
    if x.shape[-2:] == (size, size):
        return x
    lead = x.shape[:-3]
    y = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(size, size), mode="bicubic", align_corners=False)
    return y.clamp_(0.0, 1.0).reshape(*lead, x.shape[-3], size, size)


def normalize_for_towers(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """[0, 1] images (..., 3, S, S) -> {"dino": ImageNet-normalised, "siglip": 0.5/0.5-normalised}."""
    def norm(mean, std):
        m = x.new_tensor(mean).view(3, 1, 1)
        s = x.new_tensor(std).view(3, 1, 1)
        return (x - m) / s

    return {"dino": norm(DINO_MEAN, DINO_STD), "siglip": norm(SIGLIP_MEAN, SIGLIP_STD)}


def unit_to_towers(unit: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """(..., 3, H, W) images in [0, 1] (any dtype, any device) -> resized, tower-normalised pair."""
    return normalize_for_towers(resize(unit.float(), size))


def normalize_action(a: np.ndarray | torch.Tensor, q01, q99):
    """BOUNDS_Q99: map [q01, q99] to [-1, 1] and clip; dimensions with q01 == q99 map to 0."""
    lib = torch if isinstance(a, torch.Tensor) else np
    q01, q99 = lib.asarray(q01, dtype=a.dtype), lib.asarray(q99, dtype=a.dtype)
    span = q99 - q01
    out = 2.0 * (a - q01) / (span + 1e-8) - 1.0
    out = lib.clip(out, -1.0, 1.0)
    return lib.where(span == 0, lib.zeros_like(out), out)


def unnormalize_action(a: np.ndarray | torch.Tensor, q01, q99):
    """Inverse of `normalize_action` for values in [-1, 1]."""
    lib = torch if isinstance(a, torch.Tensor) else np
    q01, q99 = lib.asarray(q01, dtype=a.dtype), lib.asarray(q99, dtype=a.dtype)
    return 0.5 * (a + 1.0) * (q99 - q01) + q01
