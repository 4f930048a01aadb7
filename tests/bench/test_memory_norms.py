"""benchmarks/memory_norms.py, whose figures docs/paper_map.md quotes ("Bounded memories")."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import hopelm

spec = importlib.util.spec_from_file_location("memory_norms", Path(__file__).parents[2] / "benchmarks" / "memory_norms.py")
memory_norms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory_norms)


def test_every_memory_weight_is_reported_and_a_fresh_input_side_weight_starts_near_one():
    torch.manual_seed(0)
    model = hopelm.build_model("hope", preset="tiny", vocab_size=256, d_model=32, n_layers=2, n_heads=2)
    got = memory_norms.largest_norms(model.eval(), torch.randint(0, 256, (1, 150)), 64)
    assert sorted(got) == sorted(f"block {i} {m} {w}" for i in range(2) for m in ("proj", "mem") for w in ("W1", "W2"))
    for i in range(2):
        assert 0.5 < got[f"block {i} mem W2"] < 2.0          # W2 ~ N(0, 1/d_h): rows of norm ≈ 1
    titans = hopelm.build_model("titans", preset="tiny", vocab_size=256, d_model=32, n_layers=2, n_heads=2)
    assert all(" mem " in k for k in memory_norms.largest_norms(titans.eval(), torch.randint(0, 256, (1, 40)), 16))
