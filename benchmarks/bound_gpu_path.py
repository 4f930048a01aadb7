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


def always_project(old_formula: bool):
    def bound(W, max_norm, groups=1, stacked=None):
        if not max_norm:
            return W
        out = {}
        for m, t in W.items():
            v = t.unflatten(2, (groups, -1)) if m == stacked and groups > 1 else t
            norm = memory.rms_row_norm(v)
            scale = ((max_norm / norm.clamp_min(1e-30)).clamp(max=1.0) if old_formula
                     else max_norm / norm.clamp_min(max_norm))
            out[m] = (v * scale[..., None, None]).reshape(t.shape)
        return out
    return bound


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-formula", action="store_true", help="the scale min(1, R / ‖W‖) of before commit 82d76ce")
    p.add_argument("train_args", nargs="*", help="arguments of `hopelm train`, after --")
    args = p.parse_args()
    memory.bound_weights = always_project(args.old_formula)   # chunk_memory and step_memory look it up here
    print(f"bound: always projecting ({'old' if args.old_formula else 'current'} scale), torch {torch.__version__}",
          file=sys.stderr)
    hopelm_main(["train", *args.train_args])


if __name__ == "__main__":
    main()
