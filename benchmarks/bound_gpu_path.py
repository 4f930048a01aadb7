"""Train on the CPU through the memory bound's GPU code path: a CPU test of a GPU-only NaN.

    OMP_NUM_THREADS=1 python benchmarks/bound_gpu_path.py [--old-formula] -- --model.name=hope --train.dtype=bfloat16

`ops.memory.bound_weights` projects each memory weight onto ‖W‖_F ≤ R √rows where a chunk starts.
On an eager CPU it first asks the host whether any weight is outside and skips the projection if
none is; on a GPU (and under torch.compile) it always multiplies by the scale, so the scale's
backward runs for every weight at every chunk. Until commit 82d76ce the scale was
min(1, R / ‖W‖), whose backward is NaN for a weight with an RMS row norm near 1e-20 (the
reciprocal's −g / ‖W‖² overflows and the clamp's zero gradient times inf is NaN). This script
makes the CPU take the GPU's path (always project), with the current scale or, with
--old-formula, the old one, and then runs `hopelm train` with the arguments after `--`.
"""
from __future__ import annotations

import argparse
import sys

import torch

import hopelm.ops.memory as memory
from hopelm.cli import main as hopelm_main


def old_scale(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The scale's form before commit 82d76ce, min(1, R / ‖W‖)."""
    return (max_norm / norm.clamp_min(1e-30)).clamp(max=1.0)


def use_gpu_path(old_formula: bool) -> None:
    """Make ops.memory.bound_weights take the GPU's path: always project, never ask the host."""
    memory.may_skip_projection = lambda t: False
    if old_formula:
        memory.bound_scale = old_scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-formula", action="store_true", help="the scale min(1, R / ‖W‖) of before commit 82d76ce")
    p.add_argument("train_args", nargs="*", help="arguments of `hopelm train`, after --")
    args = p.parse_args()
    use_gpu_path(args.old_formula)
    print(f"bound: always projecting ({'old' if args.old_formula else 'current'} scale), torch {torch.__version__}",
          file=sys.stderr)
    hopelm_main(["train", *args.train_args])


if __name__ == "__main__":
    main()
