"""Decayed linear attention with scalar momentum: the output-side memory write and read.

    M_t = β M_{t−1} + η_t u_t h_tᵀ              (momentum, Titans Eq. 13–14; β = 0: M_t = η_t u_t h_tᵀ)
    S_t = α_t S_{t−1} + M_t                     (retention α_t, NL Eq. 88 for non-input-side weights)
    o_t = S_{t−1} q_t   (or S_t q_t with read_after_write=True; NL Eq. 94)

The state S is [B, H, d_v, d_x] (it maps a d_x input to a d_v output, `S @ x`). Inside a chunk of C
tokens the transition is scalar-gated, so every row of the chunk is an exact combination of the
chunk-start state and the chunk's writes with a C×C lower-triangular coefficient matrix of products
of α and β (SPEC §2). This file also holds the chunk plumbing shared by `delta.py` and `memory.py`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------------------------------------
# chunk plumbing

def segments(T: int, C: int, offset: int = 0) -> list[tuple[int, int, int]]:
    """Cut T tokens starting at absolute position `offset` into chunks aligned to multiples of C.

    Returns blocks (start, n_chunks, length): an optional short head (when offset is mid-chunk), the
    full chunks, an optional short tail. Short chunks are processed at their own length rather than
    padded, because a padded token is not an identity transition once momentum is on.
    """
    blocks, s = [], 0
    head = min((-offset) % C, T)
    if head:
        blocks.append((0, 1, head))
        s = head
    n = (T - s) // C
    if n:
        blocks.append((s, n, C))
        s += n * C
    if s < T:
        blocks.append((s, 1, T - s))
    return blocks


def to_chunks(x: Tensor, start: int, n: int, L: int) -> Tensor:
    """[B, T, H, *rest] -> [n, B, H, L, *rest] for tokens start .. start + n·L."""
    B, _, H = x.shape[:3]
    rest = x.shape[3:]
    x = x[:, start:start + n * L].reshape(B, n, L, H, *rest)
    return x.movedim(1, 0).transpose(2, 3).contiguous()


class Coeffs(NamedTuple):
    """Per-chunk coefficients, functions of α and β only. Row j = state after j tokens (j = 0..C)."""
    G: Tensor            # [..., C+1, C]  γ_j / γ_{i+1} for i < j else 0 (decay of token i's write at row j)
    D: Tensor            # [..., C+1, C]  Σ_{a=i}^{j−1} G[j,a] β^{a−i}: same, through the momentum (D = G at β = 0)
    g: Tensor            # [..., C+1]     γ_j = α_0 ⋯ α_{j−1}: weight of the chunk-start state S_0 in row j
    c: Tensor | None     # [..., C+1]     Σ_{a<j} G[j,a] β^{a+1}: weight of the chunk-start momentum M_0
    m: Tensor | None     # [C]            β^{C−1−i}: weight of write i in the final momentum M_C
    betaC: float         # β^C: weight of M_0 in M_C


def decay_coeffs(alpha: Tensor, beta: float = 0.0) -> Coeffs:
    """Coefficients of the exact chunked form; alpha [..., C] in (0, 1]."""
    C = alpha.shape[-1]
    # Ratios of cumulative products via log-space differences: a plain cumprod underflows on long
    # chunks with small α, and the ratio of two underflowed numbers is 0/0.
    # α is clamped to the smallest normal float: a sigmoid that underflowed to 0 would give log 0 =
    # −inf and −inf − (−inf) = NaN below (the per-token form multiplies by α and stays finite).
    lg = F.pad(torch.log(alpha.clamp_min(torch.finfo(alpha.dtype).tiny)).cumsum(-1), (1, 0))  # [..., C+1] log γ_j
    mask = torch.ones(C + 1, C, dtype=torch.bool, device=alpha.device).tril(-1)
    diff = lg[..., :, None] - lg[..., None, 1:]                          # [..., C+1, C]
    # Mask before exp: the upper triangle holds positive exponents that could overflow to inf.
    G = torch.where(mask, diff, float("-inf")).exp()
    g = lg.exp()
    if beta == 0.0:
        return Coeffs(G, G, g, None, None, 0.0)
    e = torch.arange(C, device=alpha.device, dtype=alpha.dtype)
    gap = e[:, None] - e[None, :]                                        # [C, C]  a − i
    Bm = torch.where(gap >= 0, beta ** gap.clamp(min=0), torch.zeros_like(gap))  # β^{a−i}, a ≥ i
    D = G @ Bm
    c = G @ (beta ** (e + 1))
    return Coeffs(G, D, g, c, Bm[-1], beta ** C)


class Last(NamedTuple):
    """The last row of a chunk's coefficients: all that the state recursion needs (per chunk)."""
    G: Tensor            # [B,H,C]
    D: Tensor            # [B,H,C]
    g: Tensor            # [B,H]
    c: Tensor | None     # [B,H]
    m: Tensor | None     # [C]
    betaC: float


def last_rows(co: Coeffs) -> list[Last]:
    """Per-chunk last rows of coefficients computed for [n_chunks, ...].

    Sliced for the whole block, then unbound once: indexing co.G[i] inside the loop would make
    each step's backward allocate a zero tensor of the whole block (quadratic in the chunk count).
    """
    n = co.G.shape[0]
    G, D, g = co.G[..., -1, :].unbind(0), co.D[..., -1, :].unbind(0), co.g[..., -1].unbind(0)
    c = co.c[..., -1].unbind(0) if co.c is not None else [None] * n
    return [Last(*r, co.m, co.betaC) for r in zip(G, D, g, c)]


def chunk_write(
    S0: Tensor, M0: Tensor | None, x: Tensor, ueff: Tensor, last: Last, delta: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """State at the end of one chunk (the only sequential part of the chunked form).

    S_C = γ_C S_0 + c_C M_0 + Σ_i (D[C,i] ueff_i + G[C,i] δ_i) x_iᵀ, with ueff_i = η_i u_i written
    through the momentum and δ_i (the delta rule's pseudo-values, delta.py) written directly.
    S0, M0 [B,H,d_v,d_x]; x [B,H,C,d_x]; ueff, delta [B,H,C,d_v]. Returns S_C, M_C (None if β = 0).
    """
    w = last.D[..., :, None] * ueff                                      # [B,H,C,d_v]
    if delta is not None:
        w = w + last.G[..., :, None] * delta
    S = last.g[..., None, None] * S0 + w.mT @ x
    if last.c is None:
        return S, None
    S = S + last.c[..., None, None] * M0
    M = last.betaC * M0 + (last.m[:, None] * ueff).mT @ x
    return S, M


def chunk_read(
    S0: Tensor, M0: Tensor | None, x: Tensor, ueff: Tensor, q: Tensor, co: Coeffs,
    *, read_after_write: bool, delta: Tensor | None = None,
) -> Tensor:
    """Reads of a chunk given its start state: o_j = S_j q_j with row j = t (or t+1 after the write),
    S_j = γ_j S_0 + c_j M_0 + Σ_{i<j} (D[j,i] ueff_i + G[j,i] δ_i) x_iᵀ, without forming any S_j.

    Works on any leading dims, so all chunks of a block are read in one batch after the state
    recursion. S0, M0 [...,d_v,d_x]; x, q [...,C,d_x]; ueff, delta [...,C,d_v] -> o [...,C,d_v].
    """
    rows = slice(1, None) if read_after_write else slice(0, -1)
    qx = q @ x.mT                                                        # [..., C, C]
    o = co.g[..., rows, None] * (q @ S0.mT) + (co.D[..., rows, :] * qx) @ ueff
    if co.c is not None:
        o = o + co.c[..., rows, None] * (q @ M0.mT)
    if delta is not None:
        o = o + (co.G[..., rows, :] * qx) @ delta
    return o


def from_chunks(o: Tensor) -> Tensor:
    """[n, B, H, L, d] -> [B, n·L, H, d] (inverse of to_chunks)."""
    n, B, H, L, d = o.shape
    return o.permute(1, 0, 3, 2, 4).reshape(B, n * L, H, d)


# ---------------------------------------------------------------------------------------------
# the three forms

def step_decay(
    q: Tensor, h: Tensor, u: Tensor, eta: Tensor, alpha: Tensor, S: Tensor, M: Tensor | None = None,
    *, beta: float = 0.0, read_after_write: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One token of decayed linear attention with momentum (Titans Eq. 13–14 with retention).

    q, h [B,1,H,d_x]; u [B,1,H,d_v]; eta, alpha [B,1,H]; S [B,H,d_v,d_x]; M like S (β > 0).
    Returns o [B,1,H,d_v], S_t, M_t (None when β = 0).
    """
    qt, ht, ut = q[:, 0], h[:, 0], u[:, 0]                               # [B,H,d]
    e, a = eta[:, 0, :, None, None], alpha[:, 0, :, None, None]          # [B,H,1,1]
    if not read_after_write:
        o = (S @ qt[..., None])[..., 0]
    write = e * (ut[..., :, None] * ht[..., None, :])                    # η u hᵀ  [B,H,d_v,d_x]
    if beta != 0.0:
        M = beta * (torch.zeros_like(S) if M is None else M) + write
        write = M
    else:
        M = None
    S = a * S + write
    if read_after_write:
        o = (S @ qt[..., None])[..., 0]
    return o[:, None], S, M


def naive_decay(
    q: Tensor, h: Tensor, u: Tensor, eta: Tensor, alpha: Tensor,
    S: Tensor | None = None, M: Tensor | None = None, *, beta: float = 0.0, read_after_write: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-token loop (the oracle). q, h [B,T,H,d_x]; u [B,T,H,d_v]; eta, alpha [B,T,H]."""
    B, T, H, dx = h.shape
    if S is None:
        S = h.new_zeros(B, H, u.shape[-1], dx)
    os = []
    # unbind, not x[:, t]: a slice's backward allocates a zero tensor of the whole sequence
    for qt, ht, ut, et, at in zip(*(x.unbind(1) for x in (q, h, u, eta, alpha))):
        o, S, M = step_decay(qt[:, None], ht[:, None], ut[:, None], et[:, None], at[:, None], S, M,
                             beta=beta, read_after_write=read_after_write)
        os.append(o)
    o = torch.cat(os, 1) if os else u.new_zeros(B, 0, H, u.shape[-1])
    return o, S, (M if beta != 0.0 else None)


def chunk_decay(
    q: Tensor, h: Tensor, u: Tensor, eta: Tensor, alpha: Tensor,
    S: Tensor | None = None, M: Tensor | None = None, *, beta: float = 0.0,
    read_after_write: bool = False, chunk_size: int = 64,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Chunked decayed linear attention: C×C masked matmuls per chunk, exact for any chunk size."""
    B, T, H, dx = h.shape
    if S is None:
        S = h.new_zeros(B, H, u.shape[-1], dx)
    if beta != 0.0 and M is None:
        M = torch.zeros_like(S)
    M = M if beta != 0.0 else None
    os = []
    for start, n, L in segments(T, chunk_size):
        qc, hc, uc = (to_chunks(x, start, n, L) for x in (q, h, u))      # [n,B,H,L,d]
        ec, ac = to_chunks(eta, start, n, L), to_chunks(alpha, start, n, L)  # [n,B,H,L]
        co = decay_coeffs(ac, beta)
        ueff = ec[..., None] * uc
        # sequential part: chunk-start states only; the reads are batched afterwards
        S0s, M0s = [], []
        for hi, ui, last in zip(hc.unbind(0), ueff.unbind(0), last_rows(co)):
            S0s.append(S)
            M0s.append(M)
            S, M = chunk_write(S, M, hi, ui, last)
        M0 = torch.stack(M0s) if beta != 0.0 else None
        os.append(from_chunks(chunk_read(torch.stack(S0s), M0, hc, ueff, qc, co, read_after_write=read_after_write)))
    o = torch.cat(os, 1) if os else u.new_zeros(B, 0, H, u.shape[-1])
    return o, S, M
