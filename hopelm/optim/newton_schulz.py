"""Newton–Schulz orthogonalization, two ways (NL §4, Eq. 42–44).

Muon (NL Eq. 42) replaces the momentum M by its orthogonal polar factor O = U Vᵀ (M = U S Vᵀ).
Nested Learning reads the Newton–Schulz iteration that approximates it as an inner optimizer:
O is a memory trained by gradient descent on the orthogonality objective

    L(O) = ¼ ‖OᵀO − I‖²_F,   ∇L(O) = O (OᵀO − I),                    (Eq. 43)
    O_{k+1} = O_k − ζ ∇L(O_k),  O_0 = M / ‖M‖_F.                       (Eq. 44)

With ζ = ½ one GD step is exactly the cubic Newton–Schulz polynomial O ← 1.5 O − 0.5 O OᵀO, which
converges to U Vᵀ for every singular value in (0, √3). `newton_schulz` is the polynomial form used
by the optimizers (Muon's quintic coefficients by default: faster, only roughly orthogonal);
`newton_schulz_gd` is the GD form, with the gradient taken by autograd from the objective itself.
"""
from __future__ import annotations

import torch

QUINTIC = (3.4445, -4.7750, 2.0315)   # Muon's coefficients: steep at 0, singular values land in ~[0.7, 1.2]
CUBIC = (1.5, -0.5, 0.0)              # the classical iteration = GD on Eq. 43 with ζ = ½; converges to U Vᵀ


def newton_schulz(m: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = QUINTIC,
                  eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximate polar factor of a matrix (or a batch [..., R, C]) by the odd polynomial iteration
    X ← a X + (b A + c A²) X with A = X Xᵀ (NL Eq. 44 in polynomial form). `dtype` is the compute
    precision (bfloat16 on accelerators, as torch.optim.Muon does); the result has m's dtype."""
    if m.dim() < 2:
        raise ValueError(f"newton_schulz needs a matrix, got a tensor of shape {tuple(m.shape)}.")
    a, b, c = coefficients
    x = m.to(dtype or m.dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:                      # iterate on the smaller Gram matrix
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)   # all singular values <= 1
    for _ in range(steps):
        gram = x @ x.mT                                         # [..., r, r], r = min(R, C)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(m.dtype)


def orthogonality_loss(o: torch.Tensor) -> torch.Tensor:
    """¼ ‖OᵀO − I‖²_F over the smaller side (NL Eq. 43)."""
    g = o.mT @ o if o.size(-2) >= o.size(-1) else o @ o.mT
    eye = torch.eye(g.size(-1), dtype=o.dtype, device=o.device)
    return 0.25 * (g - eye).pow(2).sum()


def newton_schulz_gd(m: torch.Tensor, steps: int = 20, zeta: float = 0.5, eps: float = 1e-7) -> torch.Tensor:
    """Orthogonalize m by `steps` steps of gradient descent on ¼‖OᵀO − I‖² from O_0 = m/‖m‖_F
    (NL Eq. 43–44); the gradient comes from autograd, not from the closed form."""
    o = (m / m.norm().clamp(min=eps)).detach()
    for _ in range(steps):
        o.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(orthogonality_loss(o), o)
        o = (o - zeta * grad).detach()
    return o
