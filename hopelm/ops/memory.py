"""The associative memory of HOPE / Titans: write with Delta Gradient Descent, read, chunked (SPEC §2–4).

Architectures (SPEC §2): linear M(x) = W x, or mlp M(x) = x + W1 σ(W2 x) (NL Eq. 89/91, σ = SiLU).
Per token t the memory takes one step on ℓ(M; k_t, v̂_t) with gradient G_t taken at the reference
state (the state at the start of the chunk, SPEC §4):

    input-side weight (W or W2):  W_t = W_{t−1}(α_t I − η_t k_t k_tᵀ) − η_t G_t     (NL Eq. 88)
    output-side weight W1:        W_t = α_t W_{t−1} − η_t G_t
    with momentum β:              S_t = β S_{t−1} − η_t G_t replaces −η_t G_t     (Titans Eq. 13–14)
    read:                         o_t = M_{t−1}(q_t)   (M_t(q_t) with read_after_write; NL Eq. 94)

Every G_t is rank-1 with a known vector once the reference state is fixed: the input-side weight is a
gated delta rule (delta.py) and W1 a decayed linear attention (decay.py). Chunks are aligned to
absolute positions (multiples of chunk_size counted from state.pos = 0), so prefill with chunk_memory
followed by step_memory reproduces one long chunk_memory call.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .decay import chunk_read, chunk_write, decay_coeffs, from_chunks, last_rows, segments, step_decay, to_chunks
from .delta import WY, delta_writes, step_delta, wy_factors


@dataclass
class MemoryState:
    """Fast weights of one memory, per sequence and head. Momentum buffers (S*) default to zeros.

    pos is the number of tokens already written; when it is not a multiple of chunk_size the
    reference weights of the current chunk (ref_*) must be carried too.
    """
    W: Tensor | None = None        # linear: [B, H, d_h, d_h]
    W1: Tensor | None = None       # mlp output-side: [B, H, d_h, d_m]
    W2: Tensor | None = None       # mlp input-side:  [B, H, d_m, d_h]
    S: Tensor | None = None        # momentum of W  (like W)
    S1: Tensor | None = None       # momentum of W1
    S2: Tensor | None = None       # momentum of W2
    ref_W: Tensor | None = None    # reference (chunk-start) weights while pos is mid-chunk
    ref_W1: Tensor | None = None
    ref_W2: Tensor | None = None
    pos: int = 0


# Weight names per architecture, input-side weight first (it is written by the delta rule).
_NAMES = {"linear": ("W",), "mlp": ("W2", "W1")}
_MOM = {"W": "S", "W1": "S1", "W2": "S2"}


def _check(state: MemoryState, arch: str, objective: str, chunk_size: int, momentum: float) -> tuple[str, ...]:
    if arch not in _NAMES:
        raise ValueError(f"arch must be 'linear' or 'mlp', got {arch!r}")
    if objective not in ("l2", "dot"):
        raise ValueError(f"objective must be 'l2' or 'dot', got {objective!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    names = _NAMES[arch]
    missing = [n for n in names if getattr(state, n) is None]
    if missing:
        raise ValueError(f"arch={arch!r} needs MemoryState fields {names}; missing {missing}")
    if state.pos % chunk_size and any(getattr(state, "ref_" + n) is None for n in names):
        raise ValueError(f"state.pos={state.pos} is inside a chunk of {chunk_size} tokens but the "
                         f"state carries no reference weights (ref_*)")
    return names


def _silu_grad(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def read_memory(weights: dict[str, Tensor], q: Tensor) -> Tensor:
    """M(q) for q [B, H, L, d_h] -> [B, H, L, d_h] (SPEC §2)."""
    if "W" in weights:
        return q @ weights["W"].mT
    return q + F.silu(q @ weights["W2"].mT) @ weights["W1"].mT


def inner_writes(
    ref: dict[str, Tensor], k: Tensor, v: Tensor, *, objective: str, self_target: bool,
) -> dict[str, tuple[Tensor, Tensor]]:
    """−G_t = u_t x_tᵀ for every weight, at the reference weights (SPEC §2 analytic gradients).

    k, v [B, H, L, d_h]. Returns {name: (u [B,H,L,d_out], x [B,H,L,d_in])}. The target
    v̂ = M_ref(v) (self_target) or v is a constant of the inner problem, as in NL Eq. 88.
    """
    if "W" in ref:
        W = ref["W"]
        vh = v @ W.mT if self_target else v
        e = k @ W.mT - vh if objective == "l2" else -vh                  # ∂ℓ/∂M(k)
        return {"W": (-e, k)}
    W1, W2 = ref["W1"], ref["W2"]
    z = k @ W2.mT                                                        # [B,H,L,d_m]
    h = F.silu(z)
    vh = read_memory(ref, v) if self_target else v
    e = k + h @ W1.mT - vh if objective == "l2" else -vh                 # [B,H,L,d_h]
    g2 = (e @ W1) * _silu_grad(z)                                        # (W1ᵀ e) ⊙ σ'(z)
    return {"W1": (-e, h), "W2": (-g2, k)}


def _weights(state: MemoryState, names, prefix: str = "") -> dict[str, Tensor]:
    return {n: getattr(state, prefix + n) for n in names}


def _momenta(state: MemoryState, names, momentum: float) -> dict[str, Tensor | None]:
    if momentum == 0.0:
        return {n: None for n in names}
    return {n: getattr(state, _MOM[n]) if getattr(state, _MOM[n]) is not None
            else torch.zeros_like(getattr(state, n)) for n in names}


def _new_state(names, W, Mo, ref, pos: int, C: int) -> MemoryState:
    fields = dict(W)
    fields.update({_MOM[n]: Mo[n] for n in names})
    if pos % C:                                   # mid-chunk: the next token still needs this reference
        fields.update({"ref_" + n: ref[n] for n in names})
    return MemoryState(pos=pos, **fields)


def step_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, alpha: Tensor, state: MemoryState,
    *, arch: str = "mlp", objective: str = "l2", precondition: bool = True, momentum: float = 0.0,
    self_target: bool = True, read_after_write: bool = False, chunk_size: int = 16,
    detach_inner: bool = False, pos: int | None = None,
) -> tuple[Tensor, MemoryState]:
    """One token (decoding, O(1) state). q, k, v [B,1,H,d_h]; eta, alpha [B,1,H].

    The position counter is state.pos (override with pos=): at multiples of chunk_size the reference
    weights are refreshed from the current weights, exactly where chunk_memory starts a chunk.
    """
    if pos is not None:
        state = replace(state, pos=pos)
    names = _check(state, arch, objective, chunk_size, momentum)
    W, Mo = _weights(state, names), _momenta(state, names, momentum)
    ref = W if state.pos % chunk_size == 0 else _weights(state, names, "ref_")
    r = {n: t.detach() for n, t in ref.items()} if detach_inner else ref
    writes = inner_writes(r, k.transpose(1, 2), v.transpose(1, 2), objective=objective, self_target=self_target)
    opts = dict(beta=momentum, read_after_write=read_after_write)
    n0 = names[0]
    u, x = (t.transpose(1, 2) for t in writes[n0])                       # [B,1,H,d]
    rule = step_delta if precondition else step_decay
    o, W0, M0 = rule(q, x, u, eta, alpha, W[n0], Mo[n0], **opts)          # o: W_{t−1} q (or W_t q)
    new_W, new_M = {n0: W0}, {n0: M0}
    if arch == "mlp":
        u1, h = (t.transpose(1, 2) for t in writes["W1"])
        r1, new_W["W1"], new_M["W1"] = step_decay(F.silu(o), h, u1, eta, alpha, W["W1"], Mo["W1"], **opts)
        o = q + r1
    return o, _new_state(names, new_W, new_M, ref, state.pos + 1, chunk_size)


def naive_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, alpha: Tensor, state: MemoryState,
    *, arch: str = "mlp", objective: str = "l2", precondition: bool = True, momentum: float = 0.0,
    self_target: bool = True, read_after_write: bool = False, chunk_size: int = 16,
    detach_inner: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Per-token loop (the oracle): the reference state is refreshed every chunk_size tokens;
    chunk_size=1 is the exact sequential rule, NL Eq. 88. q, k, v [B,T,H,d_h]; eta, alpha [B,T,H]."""
    _check(state, arch, objective, chunk_size, momentum)
    opts = dict(arch=arch, objective=objective, precondition=precondition, momentum=momentum,
                self_target=self_target, read_after_write=read_after_write, chunk_size=chunk_size,
                detach_inner=detach_inner)
    os = []
    # unbind, not x[:, t]: a slice's backward allocates a zero tensor of the whole sequence
    for qt, kt, vt, et, at in zip(*(x.unbind(1) for x in (q, k, v, eta, alpha))):
        o, state = step_memory(qt[:, None], kt[:, None], vt[:, None], et[:, None], at[:, None], state, **opts)
        os.append(o)
    return (torch.cat(os, 1) if os else torch.zeros_like(q)), state


def chunk_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, alpha: Tensor, state: MemoryState,
    *, arch: str = "mlp", objective: str = "l2", precondition: bool = True, momentum: float = 0.0,
    self_target: bool = True, read_after_write: bool = False, chunk_size: int = 16,
    detach_inner: bool = False, groups: int = 1,
) -> tuple[Tensor | None, MemoryState]:
    """Chunked memory (SPEC §4): loop over chunks; inside a chunk, gradients at the chunk-start
    reference state, and the retention, preconditioner and reads exact (WY form + masked matmuls).

    q, k, v [B,T,H,d_h] (k, q L2-normalised by the caller); eta, alpha [B,T,H] in (0, 1).
    Returns o [B,T,H,d_h] and the new MemoryState (same field names). q=None writes without
    reading (o is None): the projection memories of HOPE only need their new state.

    groups > 1: the state holds `groups` memories stacked along the head axis (memory-major) that
    share one write stream, so k, eta and alpha come with H / groups heads while v (each memory
    makes its own target from it) has all H. The factors that depend only on k, η, α (the decay
    coefficients and the WY triangular solve) are then computed once instead of `groups` times.
    """
    names = _check(state, arch, objective, chunk_size, momentum)
    B, T, H, _ = v.shape
    if k.shape[2] * groups != H or eta.shape[2] * groups != H:
        raise ValueError(f"k and eta need {H // groups} heads (v has {H}, groups={groups}), "
                         f"got {k.shape[2]} and {eta.shape[2]}")
    # [n, B, H/groups, ...] -> [n, B, H, ...], memory-major like the stacked state
    tile = lambda t: t if t is None or groups == 1 else t.repeat(1, 1, groups, *([1] * (t.dim() - 3)))
    W, Mo = _weights(state, names), _momenta(state, names, momentum)
    ref = _weights(state, names, "ref_") if state.pos % chunk_size else None
    n0 = names[0]                                 # the input-side weight (W or W2), read by q
    os = []
    for start, n, L in segments(T, chunk_size, state.pos):
        kc, vc = to_chunks(k, start, n, L), to_chunks(v, start, n, L)    # [n,B,H,L,d_h]
        ec, ac = to_chunks(eta, start, n, L), to_chunks(alpha, start, n, L)  # [n,B,H,L]
        co = decay_coeffs(ac, momentum)           # shared by all weights: same α, β
        factors = wy_factors(kc, ec, co) if precondition else None
        kc, ec = tile(kc), tile(ec)
        co = co._replace(**{f: tile(getattr(co, f)) for f in ("G", "D", "g", "c")})
        per = lambda t: t.unbind(0) if t is not None else [None] * n
        wys = [WY(*f) for f in zip(*(per(tile(t)) for t in factors))] if precondition else [None] * n
        # Sequential part: per chunk, the writes at the reference state and the chunk-end state.
        # Everything a read needs is kept per chunk (never per token) and read in one batch below.
        keep = {m: dict(W=[], M=[], u=[], d=[], x=[]) for m in names}
        for i, (ki, vi, ei, last, wy) in enumerate(zip(
                kc.unbind(0), vc.unbind(0), ec[..., None].unbind(0), last_rows(co), wys)):
            if ref is None or i > 0 or start > 0:
                ref = W                           # chunk start: the reference is the current state
            r = {m: t.detach() for m, t in ref.items()} if detach_inner else ref
            writes = inner_writes(r, ki, vi, objective=objective, self_target=self_target)
            new_W, new_M = {}, {}
            for m, (u, x) in writes.items():
                ueff, d = ei * u, None                                   # [B,H,L,d_out]
                if m == n0 and precondition:
                    ueff, d = delta_writes(W[m], Mo[m], ueff, wy)
                if q is not None:
                    for key, val in zip("WMudx", (W[m], Mo[m], ueff, d, x)):
                        keep[m][key].append(val)
                new_W[m], new_M[m] = chunk_write(W[m], Mo[m], x, ueff, last, d)
            W, Mo = new_W, new_M
        if q is None:
            continue
        qc = to_chunks(q, start, n, L)
        stack = lambda m, key: torch.stack(keep[m][key]) if keep[m][key][0] is not None else None
        read = lambda m, q_: chunk_read(stack(m, "W"), stack(m, "M"), stack(m, "x"), stack(m, "u"), q_, co,
                                        read_after_write=read_after_write, delta=stack(m, "d"))
        o = read(n0, qc)                                                 # [n,B,H,L,d]
        if arch == "mlp":
            o = qc + read("W1", F.silu(o))        # two-stage read (SPEC §4): q + W1 σ(W2 q)
        os.append(from_chunks(o))
    o = None if q is None else torch.cat(os, 1) if os else torch.zeros_like(q)
    return o, _new_state(names, W, Mo, ref if ref is not None else W, state.pos + T, chunk_size)
