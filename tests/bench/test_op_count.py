"""benchmarks/op_count.py, whose counts docs/results.md quotes ("On a GPU")."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("op_count", Path(__file__).parents[2] / "benchmarks" / "op_count.py")
op_count = importlib.util.module_from_spec(spec)
spec.loader.exec_module(op_count)


def test_counter_counts_every_aten_call():
    x = torch.ones(3, requires_grad=True)
    with op_count.CountOps() as c:
        (x * 2).sum().backward()
    assert c.n >= 3     # mul, sum, and the backward's ops
    with op_count.CountOps() as d:
        (x * 2).sum()
    assert 0 < d.n < c.n


def test_attention_block_is_flat_in_T_and_chunked_blocks_grow_with_it():
    t = [op_count.ops_per_block("transformer", "tiny", T) for T in (64, 128)]
    g = [op_count.ops_per_block("gated_deltanet", "tiny", T) for T in (64, 128)]
    assert t[0] == t[1] > 0
    assert g[1] > g[0] > t[0]
