"""The associative memory of HOPE / Titans: write with Delta Gradient Descent, read, chunked (SPEC §2–4).

Architectures (SPEC §2): linear M(x) = W x, or mlp M(x) = x + W1 σ(W2 x) (NL Eq. 89/91, σ = SiLU).
Per token t the memory takes one step on ℓ(M; k_t, v̂_t) with gradient G_t taken at the reference
state (the state at the start of the chunk, SPEC §4):

    input-side weight (W or W2):  W_t = W_{t−1}(α_t I − η_t k_t k_tᵀ) − η_t G_t     (NL Eq. 88)
    output-side weight W1:        W_t = α_t W_{t−1} − η_t G_t
    with momentum β:              S_t = β S_{t−1} − η_t G_t replaces −η_t G_t     (Titans Eq. 13–14)
    read:                         o_t = M_{t−1}(q_t)   (M_t(q_t) with read_after_write; NL Eq. 94)
    bound (max_norm = R > 0):     W ← W min(1, R √rows / ‖W‖_F) where a chunk starts (this project's
                                  stabiliser, not the paper's: bound_weights)

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

from .decay import Last, chunk_read, chunk_write, decay_coeffs, from_chunks, last_rows, segments, step_decay, to_chunks
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


def _check(state: MemoryState, arch: str, objective: str, chunk_size: int, momentum: float,
           max_norm: float = 0.0) -> tuple[str, ...]:
    if arch not in _NAMES:
        raise ValueError(f"arch must be 'linear' or 'mlp', got {arch!r}")
    if objective not in ("l2", "dot"):
        raise ValueError(f"objective must be 'l2' or 'dot', got {objective!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0 (0: no bound), got {max_norm}")
    names = _NAMES[arch]
    missing = [n for n in names if getattr(state, n) is None]
    if missing:
        raise ValueError(f"arch={arch!r} needs MemoryState fields {names}; missing {missing}")
    if state.pos % chunk_size and any(getattr(state, "ref_" + n) is None for n in names):
        raise ValueError(f"state.pos={state.pos} is inside a chunk of {chunk_size} tokens but the "
                         f"state carries no reference weights (ref_*)")
    return names


class _SiluGrad(torch.autograd.Function):
    """y ⊙ σ'(z) for σ = SiLU, σ'(z) = s (1 + z (1 − s)) with s = sigmoid(z).

    One fused kernel forward (aten's silu_backward) instead of six elementwise ops, and an analytic
    backward with σ''(z) = s (1 − s) (2 + z (1 − 2 s)), instead of autograd through the chain:
    these products over every token's hidden units are a large part of a HOPE step on CPU."""

    @staticmethod
    def forward(ctx, y: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(y, z)
        return torch.ops.aten.silu_backward(y, z)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        y, z = ctx.saved_tensors
        s = torch.sigmoid(z)
        if torch.is_grad_enabled():               # create_graph (cms_meta_grad="exact"): plain ops
            dy = grad * s * (1 + z * (1 - s))
        else:
            dy = torch.ops.aten.silu_backward(grad, z)
        return dy, grad * y * (s * (1 - s) * (2 + z * (1 - 2 * s)))


def silu_grad(y: Tensor, z: Tensor) -> Tensor:
    """y ⊙ σ'(z) (σ = SiLU), differentiable in y and z to any order."""
    return _SiluGrad.apply(y, z)


def read_memory(weights: dict[str, Tensor], q: Tensor) -> Tensor:
    """M(q) for q [B, H, L, d_h] -> [B, H, L, d_h] (SPEC §2)."""
    if "W" in weights:
        return q @ weights["W"].mT
    return q + F.silu(q @ weights["W2"].mT) @ weights["W1"].mT


# Grouped memories (chunk_memory's groups=g): g memories stacked memory-major along the head axis,
# [B, g·H', ...], that share k, η, α and the source v of their targets. Their input-side weights (W or
# W2) are right-multiplied by the same (α I − η k kᵀ) and read the same inputs, so head-major they are
# one wider memory per head, [B, H', g·d_out, d_in]: every product with a shared input is one matmul.

def stack_rows(W: Tensor, g: int) -> Tensor:
    """Weights [B, g·H', r, c] (memory-major) -> [B, H', g·r, c] (head-major)."""
    if g == 1:
        return W
    B, gH, r, c = W.shape
    return W.view(B, g, gH // g, r, c).transpose(1, 2).reshape(B, gH // g, g * r, c)


def unstack_rows(W: Tensor, g: int) -> Tensor:
    """Inverse of stack_rows."""
    if g == 1:
        return W
    B, Hg, gr, c = W.shape
    return W.view(B, Hg, g, gr // g, c).transpose(1, 2).reshape(B, g * Hg, gr // g, c)


def tile_heads(t: Tensor, g: int) -> Tensor:
    """[B, H', ...] -> [B, g·H', ...]: a per-head tensor shared by g memories stacked memory-major."""
    return t if g == 1 else t.repeat(1, g, *([1] * (t.dim() - 2)))


def split_vec(u: Tensor, g: int) -> Tensor:
    """Per-token vectors [B, H', L, g·r] (head-major) -> [B, g·H', L, r] (memory-major)."""
    if g == 1:
        return u
    B, Hg, L, gr = u.shape
    return _split5(u, g).reshape(B, g * Hg, L, gr // g)


def inner_writes(
    ref: dict[str, Tensor], k: Tensor, v: Tensor, *, objective: str, self_target: bool, groups: int = 1,
) -> dict[str, tuple[Tensor, Tensor]]:
    """−G_t = u_t x_tᵀ for every weight, at the reference weights (SPEC §2 analytic gradients).

    k, v [B, H', L, d_h] are shared by the `groups` memories stacked in ref (H = groups·H' heads),
    whose input-side weight (W or W2) comes head-major (stack_rows, [B, H', g·d_out, d_in]) and W1
    memory-major ([B, H, d_h, d_m]); with groups = 1 both are the plain [B, H, ...] layout. Returns
    {name: (u, x)}: u [B, H', L, g·d_out] and x = k for the input-side weight, u [B, H, L, d_h] and
    x = h [B, H, L, d_m] for W1. The target v̂ = M_ref(v) (self_target) or v is a constant of the
    inner problem, as in NL Eq. 88.
    """
    g = groups
    l2 = objective == "l2"
    # Built as u = −e directly (no negations): u = v̂ − M(k) for l2, v̂ for dot.
    if "W" in ref:
        W = ref["W"]                                                     # [B,H',g·d,d]
        vh = v @ W.mT if self_target else v.repeat(1, 1, 1, g)
        return {"W": (vh - k @ W.mT if l2 else vh, k)}
    W1, W2 = ref["W1"], ref["W2"]
    B, Hg, L, d = v.shape
    W1g = W1.reshape(B, g, Hg, *W1.shape[2:])                            # [B,g,H',d_h,d_m] memory-major
    z = k @ W2.mT                                                        # [B,H',L,g·d_m]
    h = F.silu(z)
    # u = (v − k) + W1 (σ(W2 v) − σ(W2 k)) for l2 with v̂ = M(v): one W1 product instead of two
    # (linearity); u = v + W1 σ(W2 v) for dot. Without self targets v̂ = v.
    base = (v - k if l2 else v)[:, None]                                 # [B,1,H',L,d_h], broadcast over g
    if self_target:
        hv = F.silu(v @ W2.mT)
        u = base + _split5(hv - h if l2 else hv, g) @ W1g.mT
    elif l2:
        u = base - _split5(h, g) @ W1g.mT
    else:
        u = base.expand(B, g, Hg, L, d)
    ug2 = silu_grad(_join5(u @ W1g), z)                                  # −(W1ᵀ e) ⊙ σ'(z), head-major
    return {"W1": (u.reshape(B, g * Hg, L, d), _split5(h, g).reshape(B, g * Hg, L, -1)), "W2": (ug2, k)}


def _split5(u: Tensor, g: int) -> Tensor:
    """Head-major per-token vectors [B, H', L, g·r] -> [B, g, H', L, r] (memory-major, 5-D)."""
    B, Hg, L, gr = u.shape
    return u.view(B, Hg, L, g, gr // g).permute(0, 3, 1, 2, 4)


def _join5(u: Tensor) -> Tensor:
    """[B, g, H', L, r] -> [B, H', L, g·r] (inverse of _split5)."""
    B, g, Hg, L, r = u.shape
    return u.permute(0, 2, 3, 1, 4).reshape(B, Hg, L, g * r)


def read_grouped(weights: dict[str, Tensor], x: Tensor, groups: int) -> Tensor:
    """M_j(x) of `groups` memories stacked memory-major in `weights` ([B, g·H', ...]) that read the
    same x [B, H', L, d_h]: one wide product for the input-side weight. Returns [B, g·H', L, d_h]."""
    if groups == 1:
        return read_memory(weights, x)
    if "W" in weights:
        return split_vec(x @ stack_rows(weights["W"], groups).mT, groups)
    B, Hg, L, d = x.shape
    W1 = weights["W1"]
    hid = _split5(F.silu(x @ stack_rows(weights["W2"], groups).mT), groups)  # [B,g,H',L,d_m]
    out = x[:, None] + hid @ W1.reshape(B, groups, Hg, *W1.shape[2:]).mT       # broadcast over g
    return out.reshape(B, groups * Hg, L, d)


def tile_last(last: Last, g: int) -> Last:
    """A chunk's last coefficient rows [B, H', ...] repeated for g memories stacked memory-major."""
    rep = lambda t: None if t is None else tile_heads(t, g)
    return last._replace(G=rep(last.G), D=rep(last.D), g=rep(last.g), c=rep(last.c))


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


def rms_row_norm(W: Tensor) -> Tensor:
    """‖W‖_F / √rows of each matrix in W [..., rows, cols]: the root mean square of its rows' norms,
    what bound_weights bounds. Returns [...]."""
    return torch.linalg.vector_norm(W, dim=(-2, -1)) / W.shape[-2] ** 0.5


def bound_scale(norm: Tensor, max_norm: float) -> Tensor:
    """min(1, R / norm) computed as R / max(norm, R): the same values and gradients, but the
    reciprocal's backward, −g / x², never sees a tiny norm. With min(1, R / norm), a weight whose RMS
    row norm was near 1e-20 (a memory decayed to almost nothing) overflowed x² to inf, and the zero
    gradient of the clamped branch times inf made NaN (docs/paper_map.md, "Bounded memories")."""
    return max_norm / norm.clamp_min(max_norm)


def may_skip_projection(t: Tensor) -> bool:
    """Whether bound_weights may first ask the host if anything is outside: only in eager CPU code.
    On a GPU the check would stall the stream; under torch.compile it would break the graph."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def bound_weights(W: dict[str, Tensor], max_norm: float, groups: int = 1, stacked: str | None = None) -> dict[str, Tensor]:
    """Project every memory weight W [rows, cols] onto the Frobenius ball of radius max_norm·√rows,
    W ← W · min(1, max_norm √rows / ‖W‖), per sequence, head and memory (0: off). So max_norm bounds
    the root mean square of the rows' norms; the input-side weights start near 1 (MemoryInit).
    Applied where a chunk starts, to the state that becomes the chunk's reference, so naive, chunk
    and step agree. A stabiliser of this project, not of the paper (docs/paper_map.md, "Bounded
    memories"). `stacked` names the weight that comes head-major with `groups` memories stacked
    along its rows (stack_rows)."""
    if not max_norm:
        return W
    out = {}
    for m, t in W.items():
        v = t.unflatten(2, (groups, -1)) if m == stacked and groups > 1 else t   # [B,H',g,r,c] or [B,H,r,c]
        # Nothing to project (min(1, ·) has gradient 0 there too): skip the ops where that is cheap to ask.
        if may_skip_projection(t):
            with torch.no_grad():
                if bool((rms_row_norm(v) <= max_norm).all()):
                    out[m] = t
                    continue
        out[m] = (v * bound_scale(rms_row_norm(v), max_norm)[..., None, None]).reshape(t.shape)
    return out


def step_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, alpha: Tensor, state: MemoryState,
    *, arch: str = "mlp", objective: str = "l2", precondition: bool = True, momentum: float = 0.0,
    self_target: bool = True, read_after_write: bool = False, chunk_size: int = 16,
    detach_inner: bool = False, max_norm: float = 0.0, pos: int | None = None,
) -> tuple[Tensor, MemoryState]:
    """One token (decoding, O(1) state). q, k, v [B,1,H,d_h]; eta, alpha [B,1,H].

    The position counter is state.pos (override with pos=): at multiples of chunk_size the reference
    weights are refreshed from the current weights, exactly where chunk_memory starts a chunk.
    """
    if pos is not None:
        state = replace(state, pos=pos)
    names = _check(state, arch, objective, chunk_size, momentum, max_norm)
    W, Mo = _weights(state, names), _momenta(state, names, momentum)
    if state.pos % chunk_size == 0:               # chunk start: bound the state, it becomes the reference
        W = ref = bound_weights(W, max_norm)
    else:
        ref = _weights(state, names, "ref_")
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
    detach_inner: bool = False, max_norm: float = 0.0,
) -> tuple[Tensor, MemoryState]:
    """Per-token loop (the oracle): the reference state is refreshed every chunk_size tokens;
    chunk_size=1 is the exact sequential rule, NL Eq. 88. q, k, v [B,T,H,d_h]; eta, alpha [B,T,H]."""
    _check(state, arch, objective, chunk_size, momentum, max_norm)
    opts = dict(arch=arch, objective=objective, precondition=precondition, momentum=momentum,
                self_target=self_target, read_after_write=read_after_write, chunk_size=chunk_size,
                detach_inner=detach_inner, max_norm=max_norm)
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
    detach_inner: bool = False, max_norm: float = 0.0, groups: int = 1,
) -> tuple[Tensor | None, MemoryState]:
    """Chunked memory (SPEC §4): loop over chunks; inside a chunk, gradients at the chunk-start
    reference state, and the retention, preconditioner and reads exact (WY form + masked matmuls).

    q, k, v [B,T,H,d_h] (k, q L2-normalised by the caller); eta, alpha [B,T,H] in (0, 1).
    Returns o [B,T,H,d_h] and the new MemoryState (same field names). q=None writes without
    reading (o is None): the projection memories of HOPE only need their new state.

    groups > 1: the state holds `groups` memories stacked along the head axis (memory-major) that
    share one write stream and one target source: k, v, eta and alpha come with H / groups heads, and
    each memory □ makes its own target M_□(v) (HOPE's projection memories, SPEC §3). Inside, the
    input-side weights are one wider memory per head (stack_rows), so every product with a shared
    input and the factors of k, η, α (decay coefficients, WY solve) are computed once; q must be None.

    max_norm > 0 bounds each memory's weights where a chunk starts (bound_weights), as step_memory
    does at positions that are multiples of chunk_size.
    """
    names = _check(state, arch, objective, chunk_size, momentum, max_norm)
    g = groups
    B, T, Hg, _ = v.shape
    H = getattr(state, names[0]).shape[1]
    if Hg * g != H or k.shape[2] != Hg or eta.shape[2] != Hg:
        raise ValueError(f"k, v and eta need {H // g} heads (the state has {H}, groups={g}), "
                         f"got {k.shape[2]}, {Hg} and {eta.shape[2]}")
    if g > 1 and q is not None:
        raise ValueError("groups > 1 writes without reading: pass q=None")
    n0 = names[0]                                 # the input-side weight (W or W2), read by q
    # input-side weight and its momentum head-major for the whole call (no-op when g = 1)
    hm = lambda d: {m: (stack_rows(t, g) if m == n0 and t is not None else t) for m, t in d.items()}
    W, Mo = hm(_weights(state, names)), hm(_momenta(state, names, momentum))
    ref = hm(_weights(state, names, "ref_")) if state.pos % chunk_size else None
    os = []
    for start, n, L in segments(T, chunk_size, state.pos):
        kc, vc = to_chunks(k, start, n, L), to_chunks(v, start, n, L)    # [n,B,H',L,d_h]
        ec, ac = to_chunks(eta, start, n, L), to_chunks(alpha, start, n, L)  # [n,B,H',L]
        co = decay_coeffs(ac, momentum)           # shared by all weights: same α, β
        per = lambda t: t.unbind(0) if t is not None else [None] * n
        wys = [WY(*f) for f in zip(*(per(t) for t in wy_factors(kc, ec, co)))] if precondition else [None] * n
        # Sequential part: per chunk, the writes at the reference state and the chunk-end state.
        # Everything a read needs is kept per chunk (never per token) and read in one batch below.
        keep = {m: dict(W=[], M=[], u=[], d=[], x=[]) for m in names}
        for i, (ki, vi, ei, last, wy) in enumerate(zip(
                kc.unbind(0), vc.unbind(0), ec[..., None].unbind(0), last_rows(co), wys)):
            if ref is None or i > 0 or start > 0:
                # chunk start: the (bounded) current state is the reference
                W = ref = bound_weights(W, max_norm, g, n0)
            r = {m: t.detach() for m, t in ref.items()} if detach_inner else ref
            writes = inner_writes(r, ki, vi, objective=objective, self_target=self_target, groups=g)
            new_W, new_M = {}, {}
            for m, (u, x) in writes.items():
                # W1 is memory-major: its η and coefficients are tiled over the g memories
                e_m, last_m = (ei, last) if m == n0 else (tile_heads(ei, g), tile_last(last, g))
                ueff, d = e_m * u, None                                  # [B,H,L,d_out]
                if m == n0 and precondition:
                    ueff, d = delta_writes(W[m], Mo[m], ueff, wy)
                if q is not None:
                    for key, val in zip("WMudx", (W[m], Mo[m], ueff, d, x)):
                        keep[m][key].append(val)
                new_W[m], new_M[m] = chunk_write(W[m], Mo[m], x, ueff, last_m, d)
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
    mm = lambda d: {m: (unstack_rows(t, g) if m == n0 and t is not None else t) for m, t in d.items()}
    W, Mo, ref = mm(W), mm(Mo), mm(ref if ref is not None else W)
    o = None if q is None else torch.cat(os, 1) if os else torch.zeros_like(q)
    return o, _new_state(names, W, Mo, ref, state.pos + T, chunk_size)
