"""Gated delta rule with precomputed values: the input-side DGD write and read.

    S_t = S_{t−1}(α_t I − η_t k_t k_tᵀ) + η_t u_t k_tᵀ           (NL Eq. 88 with −G_t = u_t k_tᵀ)
    o_t = S_{t−1} q_t   (or S_t q_t with read_after_write=True)  (NL Eq. 94)

With momentum β (SPEC §2) the write goes through M_t = β M_{t−1} + η_t u_t k_tᵀ and
S_t = S_{t−1}(α_t I − η_t k_t k_tᵀ) + M_t.

Chunked form (UT / WY representation). Write the preconditioner term as a pseudo-value
δ_t = −η_t S_{t−1} k_t, so that S_t = α_t S_{t−1} + δ_t k_tᵀ + M_t is a scalar-gated recurrence
(decay.py gives its exact chunk form). S_{t−1} k_t is itself linear in the earlier δ_s, which gives
the lower-triangular system (I + A) Δ = −diag(η) [γ ⊙ K S_0ᵀ + c ⊙ K M_0ᵀ + (D ⊙ K Kᵀ) Ueff] with
A[t,s] = η_t G[t,s] k_tᵀk_s. One C×C triangular solve per chunk; T = (I + A)⁻¹ depends only on k,
η, α and is computed for all chunks at once. With β = 0 this is the familiar form of gated DeltaNet
kernels: the combined write is w = T Ueff − (T diag(ηγ) K) S_0ᵀ.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .decay import Coeffs, chunk_read, chunk_write, decay_coeffs, from_chunks, last_rows, segments, to_chunks


def unit_lower_solve(L: Tensor, rhs: Tensor) -> Tensor:
    """X with L X = rhs for a unit lower-triangular L, in float32 at least.

    Triangular solves have no bfloat16 / float16 kernels (on CPU or CUDA), and under CUDA autocast
    L and rhs arrive in different dtypes (float32 gates times bfloat16 products); a C×C solve in
    bfloat16 would also lose the WY form's accuracy. Returns the two inputs' promoted dtype."""
    dt = torch.promote_types(L.dtype, rhs.dtype)
    work = torch.float32 if dt in (torch.bfloat16, torch.float16) else dt
    return torch.linalg.solve_triangular(L.to(work), rhs.to(work), upper=False, unitriangular=True).to(dt)


class WY(NamedTuple):
    """Per-chunk factors of the UT transform, functions of k, η, α, β only."""
    T: Tensor            # [..., C, C]    (I + A)⁻¹, unit lower-triangular
    Wk: Tensor           # [..., C, d_k]  T diag(η γ) K: pseudo-values' dependence on S_0
    Wm: Tensor | None    # [..., C, d_k]  T diag(η c) K: on the chunk-start momentum M_0
    P: Tensor | None     # [..., C, C]    T diag(η) (D ⊙ K Kᵀ): on the momentum-carried writes


def wy_factors(k: Tensor, eta: Tensor, co: Coeffs) -> WY:
    """k [..., C, d_k], eta [..., C], co for the same chunks (values not known in advance)."""
    ek = eta[..., None] * k                                              # η folded into k: C·d, not C² work
    ekk = ek @ k.mT                                                      # [..., C, C]  η_t k_tᵀk_s
    A = co.G[..., :-1, :] * ekk                                          # strictly lower (G[t,s]=0, s≥t)
    eye = torch.eye(k.shape[-2], dtype=k.dtype, device=k.device)
    T = unit_lower_solve(eye + A, eye.expand_as(A))
    Wk = T @ (co.g[..., :-1, None] * ek)
    if co.c is None:
        return WY(T, Wk, None, None)
    return WY(T, Wk, T @ (co.c[..., :-1, None] * ek), T @ (co.D[..., :-1, :] * ekk))


def wy_solve(k: Tensor, eta: Tensor, ueff: Tensor, co: Coeffs) -> tuple[Tensor, Tensor | None, Tensor]:
    """The WY factors applied to values known in advance, by one triangular solve per chunk with
    all right-hand sides stacked (cheaper than forming T = (I + A)⁻¹ and multiplying).

    Returns Wk, Wm (None at β = 0) and TU = T ueff (β = 0) or PU = P ueff (β > 0).
    """
    ek = eta[..., None] * k
    ekk = ek @ k.mT
    A = co.G[..., :-1, :] * ekk                                          # strictly lower
    eye = torch.eye(k.shape[-2], dtype=k.dtype, device=k.device)
    if co.c is None:
        rhs = [co.g[..., :-1, None] * ek, ueff]
    else:
        rhs = [co.g[..., :-1, None] * ek, co.c[..., :-1, None] * ek, (co.D[..., :-1, :] * ekk) @ ueff]
    X = unit_lower_solve(eye + A, torch.cat(rhs, -1))
    parts = X.split([r.shape[-1] for r in rhs], -1)
    return (parts[0], None, parts[1]) if co.c is None else parts


def delta_writes(
    S0: Tensor, M0: Tensor | None, ueff: Tensor, wy: WY,
) -> tuple[Tensor, Tensor | None]:
    """Turn one chunk's delta-rule writes into decayed writes for decay.chunk_write / chunk_read.

    S0, M0 [B,H,d_v,d_k]; ueff = η u [B,H,C,d_v]; wy: this chunk's factors. Returns (ueff', δ):
    with β = 0 a single write ueff' = ueff + Δ = T ueff − Wk S_0ᵀ (because T A = I − T) and
    δ = None; with momentum the momentum-carried ueff and the pseudo-values
    δ = −(Wk S_0ᵀ + Wm M_0ᵀ + P ueff).
    """
    if wy.P is None:
        return wy.T @ ueff - wy.Wk @ S0.mT, None
    return ueff, -(wy.Wk @ S0.mT + wy.Wm @ M0.mT + wy.P @ ueff)


# ---------------------------------------------------------------------------------------------
# the three forms

def step_delta(
    q: Tensor, k: Tensor, u: Tensor, eta: Tensor, alpha: Tensor, S: Tensor, M: Tensor | None = None,
    *, beta: float = 0.0, read_after_write: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One token of the gated delta rule (NL Eq. 88). q, k [B,1,H,d_k]; u [B,1,H,d_v];
    eta, alpha [B,1,H]; S [B,H,d_v,d_k]; M like S when β > 0. Returns o [B,1,H,d_v], S_t, M_t."""
    qt, kt, ut = q[:, 0], k[:, 0], u[:, 0]                               # [B,H,d]
    e, a = eta[:, 0, :, None, None], alpha[:, 0, :, None, None]          # [B,H,1,1]
    if not read_after_write:
        o = (S @ qt[..., None])[..., 0]
    Sk = S @ kt[..., None]                                               # [B,H,d_v,1]  S_{t−1} k_t
    write = e * (ut[..., :, None] * kt[..., None, :])                    # η u kᵀ
    if beta != 0.0:
        M = beta * (torch.zeros_like(S) if M is None else M) + write
        write = M
    else:
        M = None
    # S (αI − η k kᵀ) = α S − η (S k) kᵀ: the preconditioner uses the running state.
    S = a * S - e * (Sk * kt[..., None, :]) + write
    if read_after_write:
        o = (S @ qt[..., None])[..., 0]
    return o[:, None], S, M


def naive_delta(
    q: Tensor, k: Tensor, u: Tensor, eta: Tensor, alpha: Tensor,
    S: Tensor | None = None, M: Tensor | None = None, *, beta: float = 0.0, read_after_write: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-token loop (the oracle). q, k [B,T,H,d_k]; u [B,T,H,d_v]; eta, alpha [B,T,H]."""
    B, T, H, dk = k.shape
    if S is None:
        S = k.new_zeros(B, H, u.shape[-1], dk)
    os = []
    # unbind, not x[:, t]: a slice's backward allocates a zero tensor of the whole sequence
    for qt, kt, ut, et, at in zip(*(x.unbind(1) for x in (q, k, u, eta, alpha))):
        o, S, M = step_delta(qt[:, None], kt[:, None], ut[:, None], et[:, None], at[:, None], S, M,
                             beta=beta, read_after_write=read_after_write)
        os.append(o)
    o = torch.cat(os, 1) if os else u.new_zeros(B, 0, H, u.shape[-1])
    return o, S, (M if beta != 0.0 else None)


def chunk_delta(
    q: Tensor, k: Tensor, u: Tensor, eta: Tensor, alpha: Tensor,
    S: Tensor | None = None, M: Tensor | None = None, *, beta: float = 0.0,
    read_after_write: bool = False, chunk_size: int = 64,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Chunked gated delta rule (WY/UT form): exact for any chunk size; loops over chunks only."""
    B, T, H, dk = k.shape
    if S is None:
        S = k.new_zeros(B, H, u.shape[-1], dk)
    if beta != 0.0 and M is None:
        M = torch.zeros_like(S)
    M = M if beta != 0.0 else None
    os = []
    for start, n, L in segments(T, chunk_size):
        qc, kc, uc = (to_chunks(x, start, n, L) for x in (q, k, u))      # [n,B,H,L,d]
        ec, ac = to_chunks(eta, start, n, L), to_chunks(alpha, start, n, L)  # [n,B,H,L]
        co = decay_coeffs(ac, beta)
        ueff = ec[..., None] * uc
        # values are known in advance: everything but the state terms is solved for all chunks at once
        Wk, Wm, XU = wy_solve(kc, ec, ueff, co)
        per = lambda t: t.unbind(0) if t is not None else [None] * n
        S0s, M0s, ws, ds = [], [], [], []
        for ui, ki, last, Wki, Wmi, XUi in zip(ueff.unbind(0), kc.unbind(0), last_rows(co), per(Wk), per(Wm), per(XU)):
            if beta == 0.0:
                w, d = XUi - Wki @ S.mT, None                           # T ueff − Wk S_0ᵀ
            else:
                w, d = ui, -(Wki @ S.mT + Wmi @ M.mT + XUi)
            S0s.append(S)
            M0s.append(M)
            ws.append(w)
            ds.append(d)
            S, M = chunk_write(S, M, ki, w, last, d)
        # reads for all chunks of the block at once, from the chunk-start states
        M0 = torch.stack(M0s) if beta != 0.0 else None
        delta = torch.stack(ds) if beta != 0.0 else None
        o = chunk_read(torch.stack(S0s), M0, kc, torch.stack(ws), qc, co,
                       read_after_write=read_after_write, delta=delta)
        os.append(from_chunks(o))
    o = torch.cat(os, 1) if os else u.new_zeros(B, 0, H, u.shape[-1])
    return o, S, M
