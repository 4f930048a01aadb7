from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HOPELM_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is as fast, and far faster when the 2 cores are
    shared with other jobs (OpenMP threads then spin against each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
