"""Causal depthwise short convolution (conv.py): naive == chunk == repeated step, with a carried tail."""
from __future__ import annotations

import pytest
import torch

from hopelm.ops import chunk_conv, naive_conv, step_conv

from .helpers import F64, assert_close, grads


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T", [1, 3, 10])
def test_conv_parity_with_tail(T, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, T, 5, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=F64, requires_grad=True)
    tail = torch.randn(2, 3, 5, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=F64, requires_grad=True) if bias else None
    leaves = [x, w, tail] + ([b] if bias else [])
    ya, ta = naive_conv(x, w, tail, b)
    yb, tb = chunk_conv(x, w, tail, b)
    for u, v in zip([ya, ta] + grads([ya, ta], leaves), [yb, tb] + grads([yb, tb], leaves)):
        assert_close(u, v)
    # streaming: chunk on a prefix, then one step, then chunk on the rest
    y1, t1 = chunk_conv(x[:, :1], w, tail, b)
    y2, t2 = step_conv(x[:, 1:2], w, t1, b) if T > 1 else (x[:, :0], t1)
    y3, t3 = chunk_conv(x[:, 2:], w, t2, b)
    assert_close(ya, torch.cat([y1, y2, y3], 1))
    assert_close(ta, t3)


def test_conv_is_causal_and_starts_from_zeros():
    x = torch.randn(1, 6, 2, dtype=F64)
    w = torch.randn(2, 4, dtype=F64)
    y, _ = chunk_conv(x, w)
    # first token sees only itself (zero tail): y_0 = w[:, −1] x_0
    assert_close(y[0, 0], w[:, -1] * x[0, 0])
    x2 = x.clone()
    x2[:, 4] += 1.0
    y2, _ = chunk_conv(x2, w)
    assert torch.equal(y[:, :4], y2[:, :4])
