from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The ops tests use tiny tensors: intra-op threads only add synchronisation cost (3x slower
    on a busy 2-core machine). Restored afterwards so other test packages are unaffected."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
