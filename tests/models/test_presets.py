"""Every model at every preset has the transformer's parameter count within ±5% (fair comparisons)."""
from __future__ import annotations

import pytest
import torch

from hopelm.config import list_presets, load_config
from hopelm.models import list_models, model_from_config


def non_embedding(preset: str, name: str) -> int:
    cfg = load_config(preset, overrides={"model.name": name})
    cfg.model.vocab_size = 256
    with torch.device("meta"):           # counts only: no memory for the 350M preset
        return model_from_config(cfg.model).param_counts()["non_embedding"]


@pytest.mark.parametrize("preset", list_presets())
def test_parameter_parity(preset):
    reference = non_embedding(preset, "transformer")
    for name in list_models():
        assert abs(non_embedding(preset, name) / reference - 1) < 0.05, name


def test_preset_sizes():
    assert 1e6 <= non_embedding("tiny", "transformer") <= 3e6
    assert 15e6 <= non_embedding("small", "transformer") <= 25e6
    assert 80e6 <= non_embedding("gpu125m", "transformer") <= 90e6      # + 38.6M GPT-2 embedding = 124M
    assert 280e6 <= non_embedding("gpu350m", "transformer") <= 320e6    # + 51.5M embedding = 354M
