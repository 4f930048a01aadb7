"""benchmarks/bound_gpu_path.py, whose runs docs/results.md quotes ("η_max = 1 with the bound")."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import hopelm
from hopelm.ops import memory

spec = importlib.util.spec_from_file_location("bound_gpu_path", Path(__file__).parents[2] / "benchmarks" / "bound_gpu_path.py")
bound_gpu_path = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bound_gpu_path)


@pytest.mark.parametrize("old", [False, True])
def test_the_gpu_path_projects_always_and_gives_the_cpu_path_values(old, monkeypatch):
    g = torch.Generator().manual_seed(0)
    W = {"W1": torch.randn(2, 3, 4, 6, generator=g), "W2": torch.randn(2, 3, 6, 4, generator=g) * 0.1}
    W["W1"][1, 2] *= 10                                      # one weight outside the bound
    cpu = memory.bound_weights(W, 1.0)
    assert cpu["W2"] is W["W2"]                             # the CPU's own path skips what is inside
    for name in ("may_skip_projection", "bound_scale"):     # restored after the test
        monkeypatch.setattr(memory, name, getattr(memory, name))
    bound_gpu_path.use_gpu_path(old)
    gpu = memory.bound_weights(W, 1.0)
    assert gpu["W2"] is not W["W2"]
    for n in W:
        torch.testing.assert_close(gpu[n], cpu[n], rtol=1e-6, atol=0)
    # Through a model: hope's presets bound at R = 4, which a fresh model never reaches, so only the
    # GPU's path runs the projection's scale.
    calls = []
    scale = memory.bound_scale
    monkeypatch.setattr(memory, "bound_scale", lambda *a: calls.append(1) or scale(*a))
    model = hopelm.build_model("hope", preset="tiny", vocab_size=256, d_model=32, n_layers=1, n_heads=2)
    model(torch.randint(0, 256, (1, 20)))
    assert calls
