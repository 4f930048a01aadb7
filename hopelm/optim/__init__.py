"""Optimizers as associative memories (SPEC §7) and the trainer's optimizer builder."""
from hopelm.optim.build import MultiOptimizer, build_optimizer, lr_at, param_groups, split_params
from hopelm.optim.m3 import M3
from hopelm.optim.memories import DMGD, AdamAsMemory, DeltaMomentum, PreconditionedMomentum, l2_memory_write
from hopelm.optim.muon import Muon, make_muon
from hopelm.optim.newton_schulz import CUBIC, QUINTIC, newton_schulz, newton_schulz_gd, orthogonality_loss

__all__ = ["AdamAsMemory", "CUBIC", "DMGD", "DeltaMomentum", "M3", "Muon", "MultiOptimizer",
           "PreconditionedMomentum", "QUINTIC", "build_optimizer", "l2_memory_write", "lr_at", "make_muon",
           "newton_schulz", "newton_schulz_gd", "orthogonality_loss", "param_groups", "split_params"]
