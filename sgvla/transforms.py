"""Observation and action transforms shared by training (dataset pipeline) and evaluation.

Kept in one place so that closed-loop evaluation feeds the model exactly what training did. The
pixel path has two halves: `frames_to_unit16` turns raw frames into float16 unit images (the data
pipeline and the processor both call it), and `unit_to_towers` turns unit images into the towers'
inputs (only the model calls it, on its own device, as LeRobot's pi0 does). Images are resized in
torch (bicubic on float), never through 8-bit PIL, which would quantise the depth encoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sgvla.errors import SgvlaError
from sgvla.vocab import view_kind

DINO_MEAN = (0.485, 0.456, 0.406)  # ImageNet, DINOv2
DINO_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def depth_to_unit(depth_mm: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 1: p = 1 - tanh(depth_mm / 1000), in (0, 1]; near is bright."""
    return 1.0 - torch.tanh(depth_mm.float() / 1000.0)


#: Eq. 1 and the RGB scaling as float16 lookup tables: one gather per view replaces the float32
#: arithmetic (and tanh) plus the conversion, the bulk of a training sample's work after PNG decoding.
_RGB_UNIT16 = (np.arange(256, dtype=np.float32) * np.float32(1 / 255)).astype(np.float16)
_DEPTH_UNIT16 = depth_to_unit(torch.arange(65536)).numpy().astype(np.float16)


def frames_to_unit16(frames: Sequence[Mapping[str, Any]], views: Sequence[str]) -> torch.Tensor:
    """Raw frames (oldest first) -> float16 [len(frames) * len(views), 3, H, W] in [0, 1], frame-major.

    `frame[view]`: uint8 (H, W, 3) for *_rgb, millimetres (H, W) or (H, W, 1) for *_depth (Eq. 1,
    replicated to 3 channels). float16 keeps 11 significant bits, so Eq. 1 depth stays ~8x finer
    than an 8-bit image, at half the bytes of float32 out of DataLoader workers. No resize: the
    model resizes on its device, so every view must have the same resolution.
    """
    first = _numpy(frames[0][views[0]])
    out = np.empty((len(frames) * len(views), 3, *first.shape[:2]), dtype=np.float16)
    for k, (frame, view) in enumerate((f, v) for f in frames for v in views):
        a = _numpy(frame[view])
        if a.shape[:2] != out.shape[2:]:
            raise SgvlaError(f"view {view!r} is {a.shape[:2]} but {views[0]!r} is {out.shape[2:]}: give every view "
                             "at one resolution (the model resizes them together)")
        (_rgb_unit16 if view_kind(view) == "rgb" else _depth_unit16)(a, out[k])
    return torch.from_numpy(out)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _rgb_unit16(rgb: np.ndarray, out: np.ndarray) -> None:
    """(H, W, 3) -> out (3, H, W). uint8 goes through OpenCV's LUT on the float16 bit patterns and
    `split` into the planes (3x faster than a numpy gather over the transposed image)."""
    if rgb.dtype != np.uint8:
        out[:] = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return
    import cv2

    cv2.split(cv2.LUT(np.ascontiguousarray(rgb), _RGB_UNIT16.view(np.uint16)), list(out.view(np.uint16)))


def _depth_unit16(depth: np.ndarray, out: np.ndarray) -> None:
    """(H, W) or (H, W, 1) millimetres -> out (3, H, W) via Eq. 1. Integer millimetres (what the
    dataset stores and the envs render) are clipped to uint16 as the dataset writer does and
    looked up; other values go through `depth_to_unit` itself."""
    d = depth[..., 0] if depth.ndim == 3 else depth
    if d.dtype.kind in "ui":
        np.take(_DEPTH_UNIT16, d if d.dtype == np.uint16 else np.clip(d, 0, 65535), out=out[0])
    else:
        out[0] = depth_to_unit(torch.from_numpy(np.asarray(d, np.float32))).numpy()
    out[1:] = out[0]


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
