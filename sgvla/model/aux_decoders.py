"""Auxiliary decoders on the LLM's final hidden states (paper Sec. 4.3, Table 1) and their losses.

All decoders read the post-norm last hidden states of the *prefix* (image tokens + prompt, not the
teacher-forced action tokens), so what they see in training is exactly what they see at inference.

* global_pos / grasp / obj_pose: per-token projection (LLM width -> h), average pooling over the
  prefix, 3-layer GELU MLP with shrinking width; obj_pose normalises its quaternion.
* qpos: 12 learnable query tokens with fixed sine-cosine position codes, appended to the projected
  prefix and run through a 2-layer pre-norm transformer; each query reads out one joint.
* mask: the current frame's patch grid of one camera (its RGB and depth tokens averaged), projected,
  resized to 8x8 and upsampled by 4 transposed-conv stages (BatchNorm, GELU) to 128x128 logits;
  one decoder per camera.

Losses (Eq. 2-4) are computed per sample and averaged over the samples whose target is marked valid
(`aux_valid`); invalid rows get weight zero and their (possibly NaN) targets are never read.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgvla.errors import SgvlaError

OUTPUT_DIMS = {"global_pos": 2, "grasp": 1, "obj_pose": 7}
MASK_START_GRID = 8
MASK_STAGES = 4


def masked_mean_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of x (B, T, C) over the positions where mask (B, T) is True."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def sincos_positions(n: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 1-D sine-cosine position codes (n, dim), as in the original transformer."""
    pos = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1))
    codes = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)
    if codes.shape[1] < dim:
        codes = F.pad(codes, (0, dim - codes.shape[1]))
    return codes.to(dtype)


class PooledMLPDecoder(nn.Module):
    """Proj (d -> h), average pooling, 3-layer MLP (h -> h -> h/2 -> out)."""

    def __init__(self, d: int, h: int, out: int):
        super().__init__()
        self.proj = nn.Linear(d, h)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, h // 2), nn.GELU(),
                                 nn.Linear(h // 2, out))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(masked_mean_pool(self.proj(hidden), mask))


class QposDecoder(nn.Module):
    """Learnable joint queries + 2-layer transformer over [projected prefix; queries]."""

    def __init__(self, d: int, h: int, n_joints: int, layers: int, heads: int):
        super().__init__()
        self.proj = nn.Linear(d, h)
        self.mask_tokens = nn.Parameter(torch.zeros(n_joints, h))
        layer = nn.TransformerEncoderLayer(h, heads, 4 * h, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, 1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.proj(hidden)
        n, h = self.mask_tokens.shape
        queries = self.mask_tokens + sincos_positions(n, h, x.device, x.dtype)
        seq = torch.cat([x, queries.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        pad = torch.cat([~mask.bool(), mask.new_zeros(mask.shape[0], n, dtype=torch.bool)], dim=1)
        out = self.encoder(seq, src_key_padding_mask=pad)[:, -n:]
        return self.head(self.norm(out)).squeeze(-1)


class MaskDecoder(nn.Module):
    """Patch grid (B, g*g, d) -> mask logits (B, S, S) with 4 transposed-conv stages."""

    def __init__(self, d: int, channels: int, out_size: int):
        super().__init__()
        if out_size % (2**MASK_STAGES):
            raise SgvlaError(f"config mask_size={out_size} must be a multiple of {2**MASK_STAGES}")
        self.start = out_size // 2**MASK_STAGES
        chans = [max(channels // 2**i, 4) for i in range(MASK_STAGES + 1)]
        self.proj = nn.Linear(d, chans[0])
        stages = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            stages += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.GELU()]
        self.up = nn.Sequential(*stages)
        self.head = nn.Conv2d(chans[-1], 1, 1)

    def forward(self, grid_tokens: torch.Tensor) -> torch.Tensor:
        b, p, _ = grid_tokens.shape
        g = math.isqrt(p)
        x = self.proj(grid_tokens).transpose(1, 2).reshape(b, -1, g, g)
        if g != self.start:  # in fp32: antialiased resampling has no bf16 kernel on CPU
            x = F.interpolate(x.float(), size=(self.start, self.start), mode="bilinear", align_corners=False,
                              antialias=g > self.start).to(x.dtype)
        return self.head(self.up(x)).squeeze(1)


class AuxiliaryDecoders(nn.Module):
    """The enabled decoders of `config.aux_decoders`; `predict` and `loss` work per decoder name."""

    def __init__(self, config):
        super().__init__()
        d, h = config.text_config.hidden_size, config.aux_hidden_size
        self.heads = nn.ModuleDict()
        for name in config.aux_decoders:
            if name in OUTPUT_DIMS:
                self.heads[name] = PooledMLPDecoder(d, h, OUTPUT_DIMS[name])
            elif name == "qpos":
                self.heads[name] = QposDecoder(d, h, config.qpos_dim, config.qpos_layers, config.qpos_heads)
            elif name == "mask":
                self.heads[name] = nn.ModuleDict({cam: MaskDecoder(d, config.mask_channels, config.mask_size)
                                                  for cam in config.mask_cameras})
        self.mask_size = config.mask_size

    def predict(self, name: str, hidden: torch.Tensor, prefix_mask: torch.Tensor,
                camera_grids: dict[str, torch.Tensor] | None = None):
        """Prediction of one decoder: a tensor, or for "mask" a dict camera -> (B, S, S) logits."""
        head = self.heads[name]
        if name == "mask":
            return {cam: dec(camera_grids[cam]) for cam, dec in head.items()}
        out = head(hidden, prefix_mask)
        if name == "grasp":
            return out.squeeze(-1)
        if name == "obj_pose":
            return torch.cat([out[:, :3], F.normalize(out[:, 3:], dim=-1)], dim=-1)
        return out

    def loss(self, name: str, pred, targets: dict, valid: dict) -> torch.Tensor:
        """Valid-weighted mean loss of one decoder (Eq. 2-4)."""
        if name == "mask":
            per, ok = [], []
            for cam, logits in pred.items():
                key = f"{cam}_mask"
                t, v = _target(targets, valid, key, logits)
                t = _pool_mask(t, self.mask_size, key)
                bce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
                per.append(bce.flatten(1).mean(1))
                ok.append(v)
            return _valid_mean(torch.cat(per), torch.cat(ok))
        t, v = _target(targets, valid, name, pred)
        pred, t = pred.float(), t.float()
        if name == "grasp":
            per = F.binary_cross_entropy_with_logits(pred, t.reshape(pred.shape), reduction="none")
        elif name == "obj_pose":
            q_true = F.normalize(t[:, 3:], dim=-1)
            per = ((pred[:, :3] - t[:, :3]) ** 2).sum(-1) + 1.0 - (pred[:, 3:] * q_true).sum(-1).abs()
        else:
            per = ((pred - t) ** 2).mean(-1)
        return _valid_mean(per, v)


def _pool_mask(target: torch.Tensor, size: int, key: str) -> torch.Tensor:
    """(B, H, W) 0/1 target -> (B, size, size): each cell's fraction of target pixels, a soft BCE
    target. A decoder smaller than the rendered masks (the tiny preset's 64 px against the scene's
    128) then learns where the target is at its own resolution, at a fraction of the cost."""
    h, w = target.shape[-2:]
    if (h, w) == (size, size):
        return target.float()
    if h != w or h % size:
        raise SgvlaError(f"aux target {key} is {(h, w)}, which config mask_size={size} does not divide: use a "
                         "mask_size that divides the dataset's masks, or resize them in the data pipeline")
    return F.avg_pool2d(target.float().unsqueeze(1), h // size).squeeze(1)


def _target(targets: dict, valid: dict, key: str, like) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and validity of one key, with invalid rows replaced by zeros (they may hold NaN)."""
    if targets is None or key not in targets:
        raise SgvlaError(f"the batch has no aux target {key!r}: add it (with aux_valid) in the data pipeline "
                         "or leave that decoder out of `compute`")
    ref = like if isinstance(like, torch.Tensor) else next(iter(like.values()))
    t = torch.as_tensor(targets[key], device=ref.device)
    b = t.shape[0]
    v = valid.get(key) if valid is not None else None
    v = torch.ones(b, dtype=torch.bool, device=ref.device) if v is None else \
        torch.as_tensor(v, device=ref.device).bool().reshape(b)
    shape = (b,) + (1,) * (t.dim() - 1)
    t = torch.where(v.reshape(shape), torch.nan_to_num(t.float()), torch.zeros((), device=ref.device))
    return t, v


def _valid_mean(per_sample: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    w = valid.to(per_sample.dtype)
    return (per_sample * w).sum() / w.sum().clamp(min=1.0)
