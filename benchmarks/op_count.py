"""Count the tensor operations (aten calls, i.e. kernel launches on a GPU) of one training step.

On a GPU a small model's eager step is bound by how many kernels it launches, not by FLOPs: this
counts them per block, forward + backward, for every model at a preset's settings on the CPU (the
count does not depend on the device or the width). The transformer's count is flat in T; the
recurrent models loop over chunks in Python, so theirs grows linearly with T.

    python benchmarks/op_count.py --preset gpu125m --lengths 1024,4096
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hopelm.config import load_config
from hopelm.models import list_models, model_from_config


class CountOps(TorchDispatchMode):
    """Counts every aten operator call that reaches the dispatcher (forward and autograd's backward)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def ops_per_block(name: str, preset: str, T: int) -> int:
    """Ops that one more block adds to a training step's forward + backward: a two-block model's
    count minus a one-block model's (so embedding, head and loss cancel, and an online CMS level's
    inner gradient through the block above it is included). Width 64 with 2 heads: the count
    depends on the number of chunks and CMS blocks, not on the width."""
    def count(n_layers: int) -> int:
        cfg = load_config(preset, None, {"model.name": name, "model.vocab_size": 256, "model.d_model": 64,
                                         "model.n_heads": 2, "model.n_layers": n_layers, "model.d_ff": 128,
                                         "model.cms_hidden": 128})
        torch.manual_seed(0)
        model = model_from_config(cfg.model)
        x = torch.randint(0, 256, (1, T + 1))
        with CountOps() as c:
            model(x[:, :-1], x[:, 1:]).loss.backward()
        return c.n
    return count(2) - count(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpu125m")
    p.add_argument("--lengths", default="1024,4096")
    p.add_argument("--models", default=",".join(["transformer"] + [m for m in list_models() if m != "transformer"]))
    p.add_argument("--out", default=None, help="optional JSON output")
    a = p.parse_args()
    torch.set_num_threads(1)
    lengths = [int(t) for t in a.lengths.split(",")]
    rows = {m: {T: ops_per_block(m, a.preset, T) for T in lengths} for m in a.models.split(",")}
    print(f"| model ({a.preset} settings) | " + " | ".join(f"ops per block, T={T}" for T in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for m, r in rows.items():
        print(f"| {m} | " + " | ".join(f"{r[T]:,}" for T in lengths) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps({"preset": a.preset, "ops_per_block": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
