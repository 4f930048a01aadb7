"""benchmarks/bound_gpu_path.py, whose runs docs/results.md quotes ("η_max = 1 with the bound")."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import hopelm
from hopelm.ops import chunk_memory
from hopelm.ops import memory

spec = importlib.util.spec_from_file_location("bound_gpu_path", Path(__file__).parents[2] / "benchmarks" / "bound_gpu_path.py")
bound_gpu_path = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bound_gpu_path)


@pytest.mark.parametrize("old", [False, True])
def test_the_gpu_path_projects_always_and_gives_the_library_values(old):
    g = torch.Generator().manual_seed(0)
    W = {"W1": torch.randn(2, 3, 4, 6, generator=g), "W2": torch.randn(2, 3, 6, 4, generator=g) * 0.1}
    W["W1"][1, 2] *= 10                                      # one weight outside the bound
    ours, lib = bound_gpu_path.always_project(old)(W, 1.0), memory.bound_weights(W, 1.0)
    for n in W:
        assert torch.allclose(ours[n], lib[n], rtol=1e-6, atol=0)
    assert ours["W2"] is not W["W2"] and lib["W2"] is W["W2"]   # the CPU's own path skips what is inside


def test_patching_reaches_the_memory_ops(monkeypatch):
    """chunk_memory looks bound_weights up in ops.memory: the script's patch is the one it calls."""
    calls = []
    monkeypatch.setattr(memory, "bound_weights", lambda W, *a, **k: calls.append(1) or W)
    model = hopelm.build_model("hope", preset="tiny", vocab_size=256, d_model=32, n_layers=1, n_heads=2)
    model(torch.randint(0, 256, (1, 20)))
    assert calls and chunk_memory.__module__ == memory.__name__
