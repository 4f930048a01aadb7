"""What makes a training step capturable as a CUDA graph (train/graphs.py), checked on the CPU: no
operation in the forward or backward of any model reads a tensor's value on the host (`.item()`,
`bool(t)`, `nonzero`...), which would stall a GPU stream and fail a capture. The GPU test
(tests/gpu, `test_cuda_graph_training_equals_eager_training`) checks the capture itself."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.models.test_all_models import CONFIGS, build

aten = torch.ops.aten
HOST_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
              aten.unique_consecutive.default, aten._unique2.default, aten.equal.default, aten.is_nonzero.default}


class HostReads(TorchDispatchMode):
    """Records every aten call that copies a value computed on the device back to the host."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_training_step_never_reads_a_value_on_the_host(name, monkeypatch):
    # On a GPU the memories' norm bound projects unconditionally (ops/memory.py: bound_weights); the
    # CPU skips it after a host-side check. Take the GPU's path here, with the bound on.
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    model = build(name, memory_max_norm=1.0)
    x = torch.randint(0, 30, (2, 19))       # 19: CMS blocks, chunks and a short tail
    with HostReads() as reads:
        out = model(x[:, :-1], x[:, 1:])
        out.loss.backward()
    assert reads.calls == []
    assert all(p.grad is not None for p in model.parameters())


def test_the_check_sees_the_bounds_cpu_only_host_reads():
    """The same step on the CPU's path of the bound (a host-side check per weight and chunk) is seen."""
    model = build("hope", memory_max_norm=1.0)
    x = torch.randint(0, 30, (2, 19))
    with HostReads() as reads:
        model(x[:, :-1], x[:, 1:]).loss.backward()
    assert reads.calls and set(reads.calls) == {"aten._local_scalar_dense.default"}


def test_the_check_sees_a_host_read():
    with HostReads() as reads:
        t = torch.ones(3)
        bool((t > 0).all())
        t.sum().item()
    assert len(reads.calls) == 2
