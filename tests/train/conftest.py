from __future__ import annotations

import pytest

# A model and schedule small enough for many short runs on a 2-core CPU.
SMALL = ["--model.d_model=64", "--model.n_layers=2", "--model.n_heads=2", "--data.seq_len=64",
         "--train.batch_size=8", "--train.eval_batches=2", "--train.log_interval=5",
         "--train.progress=false", "--train.tensorboard=false", "--optim.warmup_steps=5"]


@pytest.fixture(autouse=True)
def token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HOPELM_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))
