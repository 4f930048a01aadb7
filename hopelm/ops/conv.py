"""Causal depthwise short convolution with a carried tail (NL §8 "local convolutions with window 4").

    y_t = b + Σ_{j=0}^{W−1} w[:, j] ⊙ x_{t−W+1+j}      (x_s for s < 1 comes from the tail, zeros at start)

x is [B, T, D] (channels last), weight [D, W] (w[:, −1] multiplies the current token, as in
torch's conv1d), tail [B, W−1, D] = the last W−1 inputs seen. The activation (SiLU) belongs to the layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _tail(x: Tensor, weight: Tensor, tail: Tensor | None) -> Tensor:
    if tail is None:
        return x.new_zeros(x.shape[0], weight.shape[1] - 1, x.shape[2])
    return tail


def step_conv(x: Tensor, weight: Tensor, tail: Tensor | None = None, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token: x [B, 1, D] -> y [B, 1, D], new tail [B, W−1, D]."""
    window = torch.cat([_tail(x, weight, tail), x], 1)                   # [B, W, D]
    y = (window * weight.T).sum(1, keepdim=True)
    if bias is not None:
        y = y + bias
    return y, window[:, 1:]


def naive_conv(x: Tensor, weight: Tensor, tail: Tensor | None = None, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-token loop (the oracle). x [B, T, D] -> y [B, T, D], new tail [B, W−1, D]."""
    tail = _tail(x, weight, tail)
    ys = []
    for t in range(x.shape[1]):
        y, tail = step_conv(x[:, t:t + 1], weight, tail, bias)
        ys.append(y)
    return (torch.cat(ys, 1) if ys else torch.zeros_like(x)), tail


def chunk_conv(x: Tensor, weight: Tensor, tail: Tensor | None = None, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Parallel form: one grouped conv1d over [tail, x]. x [B, T, D] -> y [B, T, D], new tail."""
    D, Wd = weight.shape
    full = torch.cat([_tail(x, weight, tail), x], 1)                     # [B, W−1+T, D]
    if x.shape[1] == 0:                                                  # conv1d rejects T = 0
        return x, full
    y = F.conv1d(full.transpose(1, 2), weight[:, None, :], bias, groups=D).transpose(1, 2)
    return y, full[:, full.shape[1] - (Wd - 1):]
