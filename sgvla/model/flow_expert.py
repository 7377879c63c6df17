"""Flow-matching action expert (pi0-style), conditioned on the VLM's per-layer keys and values.

Geometry. The expert is a Qwen2-shaped transformer with its own width (512 for the 1.3B preset)
but the LLM's depth, query/KV head counts and head size, so that expert layer l can attend to the
keys/values that LLM layer l computed for the prefix (images + prompt). This is pi0's
"mixture of transformers" restricted to the case where the prefix never attends to the actions:
the prefix is run once through the LLM (its KV cache is reused for every denoising step) and each
expert layer attends to [prefix K/V of layer l ; its own action-token K/V]. Action tokens see the
whole valid prefix and each other (bidirectional); RoPE positions continue after the prefix.

Convention (pi0's, noted because it is the opposite of the flow-matching papers): t = 1 is pure
noise, t = 0 is data. Training draws one t per sample from Beta(1.5, 1) * 0.999 + 0.001 (more
weight near the noisy end), x_t = t * noise + (1 - t) * actions, and regresses the velocity
u = noise - actions with an MSE averaged over action dims and non-padded chunk steps (padded steps
still take part in attention, as at inference where a full chunk is always sampled). Sampling
integrates dx/dt = v from t = 1 to t = 0 with `flow_steps` explicit Euler steps (dt = -1/steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm, apply_rotary_pos_emb, repeat_kv

#: (cos, sin) = rotary(x, position_ids): the LLM's own rotary embedding, so positions match its keys.
Rotary = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
PrefixKV = Sequence[tuple[torch.Tensor, torch.Tensor]]


def time_embedding(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """Sine-cosine embedding of flow time t (B,) -> (B, dim), periods log-spaced as in pi0."""
    frac = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float64)
    period = min_period * (max_period / min_period) ** frac
    angle = t.double().unsqueeze(-1) * (2.0 * math.pi / period)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).float()


def sample_time(batch: int, beta: Sequence[float], device=None) -> torch.Tensor:
    """t ~ Beta(a, b) * 0.999 + 0.001 (pi0: a = 1.5, b = 1)."""
    dist = torch.distributions.Beta(torch.tensor(float(beta[0])), torch.tensor(float(beta[1])))
    return (dist.sample((batch,)) * 0.999 + 0.001).to(device)


def expert_qwen_config(config) -> Qwen2Config:
    """Qwen2 config of the expert: the LLM's depth and heads, the expert's width."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return Qwen2Config(hidden_size=config.expert_hidden_size, intermediate_size=config.expert_intermediate_size,
                       num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
                       num_key_value_heads=text.num_key_value_heads, head_dim=head_dim,
                       rms_norm_eps=text.rms_norm_eps, hidden_act=text.hidden_act)


class ExpertLayer(nn.Module):
    """One Qwen2 decoder layer whose attention also reads the VLM prefix's keys/values."""

    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        w = cfg.hidden_size
        self.input_layernorm = Qwen2RMSNorm(w, eps=cfg.rms_norm_eps)
        self.q_proj = nn.Linear(w, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(w, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(w, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, w, bias=False)
        self.post_attention_layernorm = Qwen2RMSNorm(w, eps=cfg.rms_norm_eps)
        self.mlp = Qwen2MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """`keys`/`values` (B, n_heads, P + n, D): this layer's prefix K/V, already expanded to the
        query heads, followed by n slots that this call fills with the action tokens' K/V. Sampling
        reuses the same buffers at every Euler step instead of concatenating and expanding anew."""
        b, n, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        groups = self.n_heads // self.n_kv
        keys[:, :, -n:] = repeat_kv(k, groups)
        values[:, :, -n:] = repeat_kv(v, groups)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask)
        x = x + self.o_proj(out.transpose(1, 2).reshape(b, n, -1))
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass
class _Context:
    """What stays constant across the denoising steps of one `sample` call (or one `velocity` call):
    RoPE tables of the action positions, the attention mask (None: every key is visible) and per
    layer the (keys, values) buffers described in `ExpertLayer.forward`."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    kv: list[tuple[torch.Tensor, torch.Tensor]]


class FlowMatchingExpert(nn.Module):
    """Predicts the flow velocity of an action chunk (B, H, A) given the prefix K/V of every LLM layer."""

    def __init__(self, config):
        super().__init__()
        cfg = expert_qwen_config(config)
        w, a = cfg.hidden_size, config.action_dim
        self.width = w
        self.action_in = nn.Linear(a, w)
        self.time_mlp_in = nn.Linear(2 * w, w)
        self.time_mlp_out = nn.Linear(w, w)
        self.layers = nn.ModuleList(ExpertLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = Qwen2RMSNorm(w, eps=cfg.rms_norm_eps)
        self.action_out = nn.Linear(w, a)
        self.config = config  # the loss reads flow_time_beta / flow_samples here: a run may change them

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, prefix_kv: PrefixKV, prefix_mask: torch.Tensor | None,
                 prefix_len: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        """v(x_t, t | prefix). prefix_mask (B, P) marks the prefix keys to attend (None: all of them);
        prefix_len (B,) is the number of valid prefix tokens (action positions continue from there)."""
        h = self._embed(x_t, t)
        return self._run(h, self._context(h, prefix_kv, prefix_mask, prefix_len, rotary))

    def _embed(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Action tokens (B, H, width): noisy actions fused with the flow-time embedding."""
        dtype = self.action_in.weight.dtype
        te = time_embedding(t, self.width).to(dtype).unsqueeze(1).expand(-1, x_t.shape[1], -1)
        x = self.action_in(x_t.to(dtype))
        return self.time_mlp_out(F.silu(self.time_mlp_in(torch.cat([x, te], dim=-1))))

    def _context(self, h: torch.Tensor, prefix_kv: PrefixKV, prefix_mask: torch.Tensor | None,
                 prefix_len: torch.Tensor, rotary: Rotary) -> _Context:
        """The step-independent inputs of the layers. The K/V buffers take `h`'s dtype, which is
        the dtype the layers' projections produce (also under autocast)."""
        b, n, _ = h.shape
        positions = prefix_len.to(h.device).long().unsqueeze(1) + torch.arange(n, device=h.device)
        cos, sin = rotary(h, positions)
        mask = None
        if prefix_mask is not None:
            keep = torch.cat([prefix_mask.bool(), prefix_mask.new_ones(b, n, dtype=torch.bool)], dim=1)
            mask = keep[:, None, None, :].expand(b, 1, n, keep.shape[1])
        kv = []
        for layer, pair in zip(self.layers, prefix_kv, strict=True):
            groups = layer.n_heads // layer.n_kv
            tail = h.new_empty(b, layer.n_heads, n, layer.head_dim)
            kv.append(tuple(torch.cat([repeat_kv(p.to(h.dtype), groups), tail], dim=2) for p in pair))
        return _Context(cos, sin, mask, kv)

    def _run(self, h: torch.Tensor, ctx: _Context) -> torch.Tensor:
        for layer, (keys, values) in zip(self.layers, ctx.kv, strict=True):
            h = layer(h, ctx.cos, ctx.sin, keys, values, ctx.mask)
        return self.action_out(self.norm(h)).float()

    def loss(self, actions: torch.Tensor, pad: torch.Tensor | None, prefix_kv: PrefixKV,
             prefix_mask: torch.Tensor, prefix_len: torch.Tensor, rotary: Rotary,
             noise: torch.Tensor | None = None, t: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching MSE over the non-padded steps of the chunk (pad: True = past episode end).
        With `flow_samples` K > 1 each sample is repeated K times (its prefix K/V shared), each copy
        with its own noise and time; `noise`/`t` given are then for the B*K rows, sample-major."""
        k = self.config.flow_samples
        if k > 1:
            actions, pad, prefix_mask, prefix_len = (None if x is None else x.repeat_interleave(k, 0)
                                                     for x in (actions, pad, prefix_mask, prefix_len))
            prefix_kv = [tuple(x.repeat_interleave(k, 0) for x in pair) for pair in prefix_kv]
        actions = actions.float()
        noise = torch.randn_like(actions) if noise is None else noise.float()
        t = sample_time(actions.shape[0], self.config.flow_time_beta, actions.device) if t is None else t.float()
        tt = t.view(-1, 1, 1)
        x_t = tt * noise + (1.0 - tt) * actions
        v = self.velocity(x_t, t, prefix_kv, prefix_mask, prefix_len, rotary)
        per_step = ((v - (noise - actions)) ** 2).mean(-1)
        keep = torch.ones_like(per_step) if pad is None else (~pad.bool()).to(per_step.dtype)
        return (per_step * keep).sum() / keep.sum().clamp(min=1.0)

    @torch.no_grad()
    def sample(self, prefix_kv: PrefixKV, prefix_mask: torch.Tensor | None, prefix_len: torch.Tensor,
               rotary: Rotary, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """Euler integration from noise (t = 1) to actions (t = 0); returns (B, H, A) float32.
        Same result as calling `velocity` per step, but RoPE tables, mask and the expanded prefix
        K/V are built once for all steps."""
        x = noise.float()
        ctx = None
        for i in range(steps):
            t = torch.full((x.shape[0],), 1.0 - i / steps, device=x.device)
            h = self._embed(x, t)
            if ctx is None:
                ctx = self._context(h, prefix_kv, prefix_mask, prefix_len, rotary)
            x = x - self._run(h, ctx) / steps
        return x
