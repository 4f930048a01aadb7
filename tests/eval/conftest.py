from __future__ import annotations

import pytest
import torch

from hopelm.eval.runner import data_root

DATA = data_root()


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models run fastest on one thread, and the CI machine's cores are shared.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def need(sub: str):
    return pytest.mark.skipif(not (DATA / sub).exists(), reason=f"../shared/data/{sub} not present")
