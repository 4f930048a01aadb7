from __future__ import annotations

import pytest
import torch

from hopelm.optim.newton_schulz import CUBIC, QUINTIC, newton_schulz, newton_schulz_gd, orthogonality_loss


def polar(m: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


def well_conditioned(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Singular values in [0.3, 1]: enough NS steps reach the polar factor from ‖·‖_F-normalized input."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, min(rows, cols), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, min(rows, cols), generator=g, dtype=torch.float64))
    s = torch.linspace(0.3, 1.0, min(rows, cols), dtype=torch.float64)
    return u @ torch.diag(s) @ v.T


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (12, 5)])
def test_polynomial_and_gradient_descent_forms_both_orthogonalize(shape):
    m = well_conditioned(*shape, seed=sum(shape))
    poly = newton_schulz(m, steps=40, coefficients=CUBIC)
    gd = newton_schulz_gd(m, steps=40)
    for o in (poly, gd):
        assert orthogonality_loss(o) < 1e-12                       # OᵀO = I on the smaller side
        torch.testing.assert_close(o, polar(m), atol=1e-6, rtol=0)  # and it is m's polar factor U Vᵀ
    # Eq. 43–44: one GD step with ζ = ½ on ¼‖OᵀO − I‖² is one cubic Newton–Schulz step
    torch.testing.assert_close(newton_schulz_gd(m, steps=3), newton_schulz(m, steps=3, coefficients=CUBIC))


def test_gd_loss_decreases_monotonically():
    m = well_conditioned(10, 6, seed=3)
    losses = [orthogonality_loss(newton_schulz_gd(m, steps=k)).item() for k in range(8)]
    assert all(b < a for a, b in zip(losses, losses[1:]))


@pytest.mark.parametrize("shape", [(64, 64), (64, 176), (176, 64)])
def test_muon_quintic_is_roughly_orthogonal(shape):
    m = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(newton_schulz(m, steps=5, coefficients=QUINTIC))
    # Muon's iteration sends the bulk of the spectrum to a band around 1, by design (a random square
    # matrix has a few near-zero singular values that 5 steps cannot lift)
    assert torch.quantile(s, 0.05) > 0.6 and s.max() < 1.3
    assert newton_schulz(m.bfloat16()).dtype == torch.bfloat16


def test_vectors_are_rejected():
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.ones(4))
