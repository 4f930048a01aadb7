"""Shared helpers for the ops parity tests: random inputs, tolerant comparison, gradients."""
from __future__ import annotations

import torch
import torch.nn.functional as F

F64 = torch.float64


def assert_close(a: torch.Tensor | None, b: torch.Tensor | None, tol: float = 1e-10, what: str = "") -> None:
    """|a − b| ≤ tol · max(1, max|a|): absolute near 1, relative for values the dynamics grew."""
    assert (a is None) == (b is None), f"{what}: one side is None"
    if a is None:
        return
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    scale = max(1.0, a.detach().abs().max().item()) if a.numel() else 1.0
    err = (a.detach() - b.detach()).abs().max().item() if a.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.0e} x scale {scale:.3e}"


def seq_inputs(B: int, T: int, H: int, d: int, *, dv: int | None = None, seed: int = 0,
               dtype: torch.dtype = F64, eta_max: float = 0.5) -> dict[str, torch.Tensor]:
    """q, k (unit norm), v (or u with width dv), eta in (0, eta_max), alpha in (0.8, 1); all leaves."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    x = dict(
        q=F.normalize(r(B, T, H, d), dim=-1),
        k=F.normalize(r(B, T, H, d), dim=-1),
        v=r(B, T, H, dv or d),
        eta=eta_max * torch.sigmoid(r(B, T, H)),
        alpha=0.8 + 0.2 * torch.sigmoid(r(B, T, H)),
    )
    return {n: t.requires_grad_() for n, t in x.items()}


def rand_like_leaf(shape, seed: int, scale: float = 0.3, dtype: torch.dtype = F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()


def grads(outputs: list[torch.Tensor | None], leaves: list[torch.Tensor], seed: int = 123) -> list[torch.Tensor]:
    """Gradients of a fixed random projection of all outputs w.r.t. the leaves (zeros if unused)."""
    g = torch.Generator().manual_seed(seed)
    loss = 0.0
    for o in outputs:
        if o is not None:
            loss = loss + (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
    gs = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(l) if gr is None else gr for l, gr in zip(leaves, gs)]
