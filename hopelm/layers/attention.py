"""Causal multi-head softmax attention with rotary positions and an explicit KV cache.

The cache is the layer's state: `forward(x, state)` appends this call's keys and values to it
and returns the new state, so a prefix followed by token-by-token decoding computes exactly what
one call on the whole sequence computes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclass
class KVCache:
    k: torch.Tensor   # [B, H, T_seen, d_h], keys already rotated
    v: torch.Tensor   # [B, H, T_seen, d_h]

    @property
    def length(self) -> int:
        return self.k.shape[2]


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables [T, dim/2] for rotary embeddings (Su et al., RoFormer Eq. 34)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]   # float64: exact for long offsets
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x_i, x_{i+d/2}) of x [B, H, T, d_h] by the position angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    """Transformer++ attention: no biases, RoPE on q and k, SDPA kernel."""

    def __init__(self, d_model: int, n_heads: int, rope_theta: float = 10000.0):
        super().__init__()
        self.n_heads, self.d_head, self.rope_theta = n_heads, d_model // n_heads, rope_theta
        # The fused CPU kernel has no double backward; second-order users (CMS exact meta
        # gradients) switch to the math kernel.
        self.double_backward = False
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, d_h]
        start = 0 if state is None else state.length
        pos = torch.arange(start, start + T, device=x.device)
        cos, sin = rope_cos_sin(pos, self.d_head, self.rope_theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if state is not None:
            k = torch.cat([state.k, k], dim=2)
            v = torch.cat([state.v, v], dim=2)
        with sdpa_kernel(SDPBackend.MATH) if self.double_backward else contextlib.nullcontext():
            if start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif T == 1:
                y = F.scaled_dot_product_attention(q, k, v)   # one new query sees the whole cache
            else:
                # A chunk after a cached prefix: query i (position start+i) sees keys 0..start+i.
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.out(y), KVCache(k, v)
