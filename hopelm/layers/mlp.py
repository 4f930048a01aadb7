"""Feed-forward blocks: the SwiGLU MLP of Transformer++ (Shazeer, 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_width(d_model: int, multiple: int = 32) -> int:
    """Hidden width 8/3 * d_model rounded up to a multiple, so SwiGLU's three matrices hold
    as many parameters as a 4x GELU MLP's two (the LLaMA convention)."""
    return multiple * ((int(8 * d_model / 3) + multiple - 1) // multiple)


class SwiGLU(nn.Module):
    """y = W_down (SiLU(W_gate x) * W_up x); no biases."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))
