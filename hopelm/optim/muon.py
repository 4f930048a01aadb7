"""Muon = momentum + Newton–Schulz orthogonalization (NL Eq. 42).

`make_muon` returns `torch.optim.Muon` when the installed torch has it and our `Muon` otherwise;
both follow the same update, so a checkpoint's hyper-parameters mean the same thing either way:

    B ← μ B + (1 − μ) G                      (momentum as an EMA memory of gradients)
    U = (1 − μ) G + μ B   (Nesterov) or B
    W ← W (1 − η λ) − η · 0.2 √max(R, C) · NS_T(U)

The 0.2 √max(R, C) factor ("match_rms_adamw") gives the update the RMS of a typical AdamW update,
so Muon and the AdamW groups beside it share one learning rate and one schedule.
"""
from __future__ import annotations

import math

import torch

from hopelm.optim.newton_schulz import QUINTIC, newton_schulz


def adjusted_lr(lr: float, shape: torch.Size, adjust: str | None) -> float:
    rows, cols = shape[:2]
    if adjust == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if adjust in (None, "original"):
        return lr * math.sqrt(max(1.0, rows / cols))
    raise ValueError(f"adjust_lr_fn={adjust!r} is not one of 'original', 'match_rms_adamw'.")


class Muon(torch.optim.Optimizer):
    """Our Muon, used when torch.optim.Muon is missing (torch < 2.9). 2-D parameters only."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = QUINTIC,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"Muon: lr={lr} and weight_decay={weight_decay} must be >= 0.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum={momentum} must be in [0, 1).")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps={ns_steps} must be >= 1.")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon only takes 2-D parameters, got shape {tuple(p.shape)}.")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mu, lr = group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - mu)
                update = g.lerp(buf, mu) if group["nesterov"] else buf
                # bfloat16 like torch.optim.Muon, so both paths give the same numbers
                o = newton_schulz(update, group["ns_steps"], group["ns_coefficients"], group["eps"],
                                  dtype=torch.bfloat16)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(o, alpha=-adjusted_lr(lr, p.shape, group["adjust_lr_fn"]))
        return loss


def make_muon(params, impl: str = "auto", **kwargs) -> torch.optim.Optimizer:
    """torch.optim.Muon when present (impl='auto' or 'torch'), else ours (impl='own')."""
    native = getattr(torch.optim, "Muon", None)
    if impl == "torch" and native is None:
        raise ValueError("optim.muon_impl='torch' but this torch has no torch.optim.Muon; use 'auto' or 'own'.")
    if impl in ("auto", "torch") and native is not None:
        return native(params, **kwargs)
    return Muon(params, **kwargs)
