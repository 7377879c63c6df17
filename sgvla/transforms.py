"""Observation and action transforms shared by training (dataset pipeline) and evaluation.

Kept in one place so that closed-loop evaluation feeds the model exactly what training did. The
pixel path has two halves. `raw_frames` stacks raw frames as the dataset stores them (uint8 RGB,
uint16 millimetres of depth, one plane): the data pipeline and the processor both call it, so
DataLoader workers ship the decoded bytes and nothing more. `raw_to_towers` turns those into the
towers' inputs (RGB / 255 or Eq. 1 depth, bicubic resize, normalisation): only the model calls it,
on its own device, as LeRobot's pi0 does. Images are resized in torch (bicubic on float32), never
through 8-bit PIL, which would quantise the depth encoding.

Crops (`SGVLAConfig.crop_area` < 1, MiniVLA/OpenVLA's `image_aug` random resized crop): the towers
see a square of that fraction of each view's area, at a random place per sample and camera in
training and in the centre otherwise (as OpenVLA deploys a model trained with augmentation). One
box per camera covers its RGB and depth views, every history frame and its target mask, so what
the views show and what the mask decoder is asked for stay aligned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sgvla.errors import SgvlaError
from sgvla.vocab import view_camera, view_kind

DINO_MEAN = (0.485, 0.456, 0.406)  # ImageNet, DINOv2
DINO_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def depth_to_unit(depth_mm: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 1: p = 1 - tanh(depth_mm / 1000), in (0, 1]; near is bright."""
    return 1.0 - torch.tanh(depth_mm.float() / 1000.0)


def raw_frames(frames: Sequence[Mapping[str, Any]], views: Sequence[str], *,
               copy: bool = True) -> dict[str, torch.Tensor]:
    """Raw frames (oldest first) -> {view: uint8 (T, H, W, 3) for *_rgb, uint16 (T, H, W) for *_depth}.

    `frame[view]`: uint8 (H, W, 3) RGB; depth in millimetres (H, W) or (H, W, 1), any int/float
    dtype, clipped to uint16 as the dataset writer stores it (`depth_mm_u16`). No conversion: the
    model turns these into unit images on its device (`raw_to_unit`), so every view must have the
    same resolution (the model resizes them together). `copy=False`: the caller gives its arrays
    away (the data pipeline's freshly decoded PNGs), so a single frame becomes the tensors' memory
    without a copy (a copy of every view cost the pipeline ~4% of its samples/s).
    """
    out = {v: torch.from_numpy(_stack([_raw_view(f[v], v) for f in frames], copy)) for v in views}
    size = out[views[0]].shape[1:3]
    for v, x in out.items():
        if x.shape[1:3] != size:
            raise SgvlaError(f"view {v!r} is {tuple(x.shape[1:3])} but {views[0]!r} is {tuple(size)}: give every "
                             "view at one resolution (the model resizes them together)")
    return out


def check_raw(pixels: Mapping[str, torch.Tensor], views: Sequence[str], frames: int) -> None:
    """A batch of `raw_frames` holds exactly these views, `frames` of each, in their raw dtypes."""
    def fits(v: str, x: torch.Tensor) -> bool:
        rgb = view_kind(v) == "rgb"
        return (x.ndim == (5 if rgb else 4) and x.shape[1] == frames and (not rgb or x.shape[-1] == 3)
                and x.dtype == (torch.uint8 if rgb else torch.uint16))

    if not isinstance(pixels, Mapping):
        raise SgvlaError(f"pixel_values must be a dict of raw frames per view, got {type(pixels).__name__}")
    if set(pixels) != set(views) or not all(fits(v, x) for v, x in pixels.items()):
        got = {k: (tuple(x.shape), str(x.dtype)) for k, x in pixels.items()}
        raise SgvlaError(f"pixel_values are {got} but the model expects raw frames of views={list(views)}: uint8 "
                         f"(B, {frames}, H, W, 3) per RGB view, uint16 (B, {frames}, H, W) per depth view "
                         "(sgvla.transforms.raw_frames, as the data pipeline and SGVLAProcessor give them, "
                         "built from the model's config)")


def depth_mm_u16(depth_mm: np.ndarray) -> np.ndarray:
    """Depth in millimetres (H, W) or (H, W, 1), any int/float dtype -> uint16 (H, W), clipped to
    [0, 65535] as the dataset writer stores it, so evaluation depth reaches the model as training's did."""
    d = np.asarray(depth_mm)
    d = d[..., 0] if d.ndim == 3 else d
    return d if d.dtype == np.uint16 else np.clip(d, 0, 65535).astype(np.uint16)


def _stack(arrays: list[np.ndarray], copy: bool) -> np.ndarray:
    return arrays[0][None] if len(arrays) == 1 and not copy else np.stack(arrays)


def _raw_view(x: Any, view: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if view_kind(view) == "depth":
        return depth_mm_u16(a)
    if a.dtype != np.uint8:
        raise SgvlaError(f"{view!r} must be uint8 RGB (H, W, 3) as the dataset stores it (got {a.dtype})")
    return a


def raw_to_unit(pixels: Mapping[str, torch.Tensor], views: Sequence[str]) -> torch.Tensor:
    """{view: (B, T, H, W, 3) uint8 | (B, T, H, W) uint16} -> float32 (B, T * V, 3, H, W) in [0, 1],
    frame-major, views in `views` order: RGB / 255, depth via Eq. 1 replicated to 3 channels."""
    planes = []
    for v in views:
        x = pixels[v]
        if view_kind(v) == "rgb":
            planes.append(x.movedim(-1, -3).float() / 255)
        else:
            planes.append(depth_to_unit(x).unsqueeze(-3).expand(*x.shape[:-2], 3, *x.shape[-2:]))
    return torch.stack(planes, dim=2).flatten(1, 2)


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


def raw_to_towers(pixels: Mapping[str, torch.Tensor], views: Sequence[str], size: int,
                  crops: CropBoxes | None = None) -> dict[str, torch.Tensor]:
    """Raw views (`raw_frames`, batched) -> the towers' inputs (B, T * V, 3, size, size), on their
    device; cropped to `crops` first when given."""
    unit = raw_to_unit(pixels, views)
    return unit_to_towers(unit if crops is None else crops.crop_views(unit, views), size)


class CropBoxes:
    """One square crop per (sample, camera): `corners` (B, cameras, 2) are the top-left (y, x) as
    fractions of the view, `side` the square's side as a fraction (sqrt of the area kept)."""

    def __init__(self, corners: torch.Tensor, cameras: Sequence[str], area: float):
        self.corners, self.cameras, self.side = corners, tuple(cameras), area ** 0.5

    @classmethod
    def draw(cls, batch: int, cameras: Sequence[str], area: float, random: bool) -> CropBoxes:
        """Uniform random places (training; torch's global RNG, which checkpoints save) or centres."""
        room = 1.0 - area ** 0.5
        shape = (batch, len(cameras), 2)
        corners = torch.rand(shape) * room if random else torch.full(shape, room / 2)
        return cls(corners, cameras, area)

    def _slices(self, b: int, camera: str, h: int, w: int) -> tuple[slice, slice]:
        ch, cw = max(1, round(h * self.side)), max(1, round(w * self.side))
        y, x = self.corners[b, self.cameras.index(camera)].tolist()
        y0, x0 = min(round(y * h), h - ch), min(round(x * w), w - cw)
        return slice(y0, y0 + ch), slice(x0, x0 + cw)

    def crop_views(self, unit: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
        """(B, T * V, C, H, W) frame-major views -> (B, T * V, C, h, w), each view cut to its camera's box."""
        h, w = unit.shape[-2:]
        out = []
        for b in range(unit.shape[0]):
            planes = []
            for j in range(unit.shape[1]):
                ys, xs = self._slices(b, view_camera(views[j % len(views)]), h, w)
                planes.append(unit[b, j, :, ys, xs])
            out.append(torch.stack(planes))
        return torch.stack(out)

    def crop_mask(self, mask: torch.Tensor, camera: str) -> torch.Tensor:
        """A camera's target masks (B, S, S) cut to its boxes and brought back to S x S (nearest)."""
        s_h, s_w = mask.shape[-2:]
        cut = [mask[b][self._slices(b, camera, s_h, s_w)] for b in range(mask.shape[0])]
        resized = F.interpolate(torch.stack(cut).unsqueeze(1).float(), size=(s_h, s_w), mode="nearest")
        return resized.squeeze(1).to(mask.dtype)


def normalize_action(a: np.ndarray | torch.Tensor, q01, q99):
    """BOUNDS_Q99: map [q01, q99] to [-1, 1] and clip; dimensions with q01 == q99 map to 0."""
    lib = torch if isinstance(a, torch.Tensor) else np
    q01, q99 = lib.asarray(q01, dtype=a.dtype), lib.asarray(q99, dtype=a.dtype)
    span = q99 - q01
    out = 2.0 * (a - q01) / (span + 1e-8) - 1.0
    out = lib.clip(out, -1.0, 1.0)
    return lib.where(span == 0, lib.zeros_like(out), out)


def uniform_bin(a: np.ndarray | torch.Tensor, n_bins: int):
    """Index (as a float, unclipped) of the uniform bin on [-1, 1] that each value falls in: bin i
    covers [-1 + i w, -1 + (i + 1) w), w = 2 / n_bins. The one definition of the "sgvla" action-token
    bins (`ActionTokenizer`) and of `sgvla demos --token-grid`; callers clip to 0..n_bins-1."""
    lib = torch if isinstance(a, torch.Tensor) else np
    return lib.floor((a + 1.0) / (2.0 / n_bins))


def uniform_bin_centre(index: np.ndarray | torch.Tensor, n_bins: int):
    """Centre of uniform bin `index` (see `uniform_bin`): what its action token decodes to."""
    return -1.0 + (index + 0.5) * (2.0 / n_bins)


def snap_to_bins(a: np.ndarray, n_bins: int) -> np.ndarray:
    """The centre of the uniform bin each value falls in (values outside [-1, 1] go to the end bins),
    so an action already on this grid survives tokenizing unchanged. `sgvla demos --token-grid`
    records experts this way."""
    idx = np.clip(uniform_bin(np.asarray(a, np.float64), n_bins), 0, n_bins - 1)
    return uniform_bin_centre(idx, n_bins).astype(np.asarray(a).dtype)


def unnormalize_action(a: np.ndarray | torch.Tensor, q01, q99):
    """Inverse of `normalize_action` for values in [-1, 1]."""
    lib = torch if isinstance(a, torch.Tensor) else np
    q01, q99 = lib.asarray(q01, dtype=a.dtype), lib.asarray(q99, dtype=a.dtype)
    return 0.5 * (a + 1.0) * (q99 - q01) + q01
