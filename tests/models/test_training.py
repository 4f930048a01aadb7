"""Every model trains on the vendored corpus: finite, decreasing loss."""
from __future__ import annotations

import numpy as np
import pytest

from hopelm.models import list_models
from hopelm.train import trainer
from tests.train.conftest import SMALL


@pytest.fixture(autouse=True)
def token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HOPELM_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))


def train(tmp_path, name: str, overrides: list[str]) -> list[float]:
    cfg, tok, _ = trainer.prepare_run("tiny", None, overrides + [
        f"--model.name={name}", f"--train.out_dir={tmp_path / name}", "--train.eval_interval=0",
        "--train.progress=false", "--train.tensorboard=false"])
    losses = trainer.train(cfg, tok)["losses"]
    return [losses[s] for s in sorted(losses)]


@pytest.mark.parametrize("name", list_models())
def test_each_model_learns(tmp_path, name):
    # Small widths and CMS periods of 32 so the online levels update inside each 64-token window.
    losses = train(tmp_path, name, SMALL + ["--train.max_steps=25", "--model.cms_periods=[32,64,0]",
                                                  "--model.cms_lrs=[1e-3,3e-4,0.0]",
                                                  "--model.projection_chunk_size=16"])
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


@pytest.mark.slow
def test_hope_default_tiny_200_steps(tmp_path):
    """The issue's check at default settings (several minutes on a 2-core CPU)."""
    losses = train(tmp_path, "hope", ["--train.max_steps=200"])
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 1.0
