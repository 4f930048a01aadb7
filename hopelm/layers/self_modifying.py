"""Self-modifying Titans (NL §8, Eq. 83–97; SPEC §3) and the static-projection memories built from
the same parts: the Titans neural memory and Gated DeltaNet.

Per layer and head (SPEC §3):
  1. x̃_t = SiLU(conv4(W_in x_t))                          causal depthwise conv, tail in the state
  2. k_t = M_k(x̃_t), v_t = M_v(x̃_t),                      memories read at the reference state
     η_t = η_max σ(w_ηᵀ M_η(x̃_t) + b_η), α_t = σ(w_αᵀ M_α(x̃_t) + b_α),  q_t = W_q x_t (static)
  3. every memory □ learns ℓ(M_□; k_t, M_□(v_t)) by DGD (self-generated targets, Eq. 88);
     ablations: `self_target=False` gives M_memory the target v_t, `projection_writes=False`
     keeps M_k, M_v, M_η, M_α at their initial states, `projection_rate=s < 1` runs their writes
     on a slower clock (η → s η, 1 − α → s (1 − α))
  4. o_t = M_memory,t−1(q_t)                                 (Eq. 94; read_after_write: M_t(q_t))
  5. y = W_out (RMSNorm(concat heads o) ⊙ SiLU(W_g x))
The projection memories M_k, M_v, M_η, M_α (and M_q with adaptive_q) are stacked along the head
axis and written by one chunk_memory call per projection chunk; M_memory is one chunk_memory call
over the whole input. The Python loop runs over projection chunks, never over tokens.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from hopelm.layers.norm import RMSNorm
from hopelm.ops import MemoryState, chunk_conv, chunk_memory
from hopelm.ops.decay import segments
from hopelm.ops.memory import bound_weights, read_grouped


@dataclass
class MemoryOptions:
    """Options of the inner memories (SPEC §2–4); names follow the model config keys."""
    self_modifying: bool = True
    memory_arch: str = "mlp"           # mlp | linear
    memory_expansion: int = 1          # d_m = memory_expansion * d_h for the mlp memory
    objective: str = "l2"              # l2 | dot
    precondition: bool = True          # DGD's (α I − η k kᵀ) term; False = GD with weight decay
    momentum: float = 0.0              # β of the inner momentum (Titans Eq. 13–14)
    adaptive_q: bool = False           # q from a memory too (NL Table 6 ablation)
    read_after_write: bool = False
    chunk_size: int = 16
    projection_chunk_size: int = 16
    detach_inner: bool = False
    eta_max: float = 1.0
    eta_init: float = 0.1              # η at initialisation, at most η_max / 2
    alpha_init: tuple[float, ...] = (0.999,)  # α at initialisation: all heads, or (first, last) head
    normalize_v: bool = True           # L2-normalise self-generated values (stability, see paper_map)
    self_target: bool = True           # M_memory's target M_memory(v) (SPEC §3.3); False: v (Titans)
    projection_writes: bool = True     # False: M_k, M_v, M_η, M_α stay at M_□,0 (static, memory-shaped)
    projection_rate: float = 1.0       # s: the projection memories write with s·η and retain 1 − s(1 − α)
    proj_init_std: float = 0.02        # random part of the projection memories' M_□,0 (see MemoryInit)
    retention: bool = True             # False fixes α = 1 (NL Table 6 "w/o weight decay")
    memory_max_norm: float = 0.0       # bound on each memory weight's Frobenius norm at chunk starts (0: off)
    conv_width: int = 4


@dataclass
class SMState:
    conv: torch.Tensor | None          # [B, conv_width − 1, D] last inputs of the short conv
    proj: MemoryState | None           # stacked projection memories, heads [k | v | η | α (| q)]
    mem: MemoryState | None            # M_memory


def head_retentions(alpha_init: Sequence[float], n_heads: int) -> torch.Tensor:
    """Retention α per head at initialisation [H]: one value for every head, or (first, last) with
    1 − α spaced geometrically between them, so that heads forget at rates from fast to slow (as the
    decay ranges of Mamba-2 and Gated DeltaNet do; a head with α ≈ 0.999 keeps ~1000 tokens)."""
    first, last = alpha_init[0], alpha_init[-1]
    return 1.0 - torch.logspace(math.log10(1.0 - first), math.log10(1.0 - last), n_heads, dtype=torch.float64)


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)


class MemoryInit(nn.Module):
    """Learnable initial state M_0 of `n` memories per head (meta-learned through the unrolled
    in-context updates, SPEC §3.6): M(x) = x + W1 σ(W2 x) (mlp) or M(x) = W x (linear)."""

    def __init__(self, n: int, d_h: int, d_m: int, arch: str, std: float = 0.02):
        super().__init__()
        self.arch = arch
        if arch == "mlp":
            # W2 reads the key; a small W1 (std) keeps M close to the identity residual at the start.
            self.W2 = nn.Parameter(torch.randn(n, d_m, d_h) / math.sqrt(d_h))
            self.W1 = nn.Parameter(torch.randn(n, d_h, d_m) * std)
        else:
            self.W = nn.Parameter(torch.eye(d_h).repeat(n, 1, 1) + torch.randn(n, d_h, d_h) * std)

    def state(self, batch: int) -> MemoryState:
        names = ("W1", "W2") if self.arch == "mlp" else ("W",)
        return MemoryState(**{n: getattr(self, n).unsqueeze(0).expand(batch, -1, -1, -1) for n in names})


class SelfModifyingMemory(nn.Module):
    """The HOPE sequence mixer. `opts.self_modifying=False` gives static linear projections for
    k, v, η, α (Titans neural memory / Gated DeltaNet, depending on the memory options)."""

    def __init__(self, d_model: int, n_heads: int, opts: MemoryOptions):
        super().__init__()
        self.opts, self.H, self.d_h = opts, n_heads, d_model // n_heads
        d_h, H = self.d_h, n_heads
        d_m = opts.memory_expansion * d_h if opts.memory_arch == "mlp" else d_h
        self.conv = nn.Parameter(torch.empty(d_model, opts.conv_width).uniform_(-1, 1) / math.sqrt(opts.conv_width))
        if not (opts.self_modifying and opts.adaptive_q):
            self.q = nn.Linear(d_model, d_model, bias=False)       # the one static projection
        self.gate = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.norm = RMSNorm(d_model)
        # Gate biases: η ≈ eta_init (at most η_max / 2) and α ≈ alpha_init at initialisation; SPEC §3's
        # decision is 0.1 and 0.999; gated_deltanet's presets spread α over the heads (docs/paper_map.md).
        eta0 = min(opts.eta_init, opts.eta_max / 2) / opts.eta_max
        self.b_eta = nn.Parameter(torch.full((H,), math.log(eta0) - math.log1p(-eta0)))
        self.b_alpha = nn.Parameter(torch.logit(head_retentions(opts.alpha_init, H)).float())
        if opts.self_modifying:
            self.w_in = nn.Linear(d_model, d_model, bias=False)
            self.n_proj = 5 if opts.adaptive_q else 4
            # Near-identity projection memories all read x̃ alike, so k ≈ v at the start (mean cosine
            # 0.996 at std 0.02) and the self-referential error M(k) − M(v) ≈ 0: little is written
            # until the outer loop separates them. A larger std starts them apart (docs/paper_map.md).
            self.proj_init = MemoryInit(self.n_proj * H, d_h, d_m, opts.memory_arch, opts.proj_init_std)
            self.w_eta = nn.Parameter(torch.randn(H, d_h) * 0.02)
            self.w_alpha = nn.Parameter(torch.randn(H, d_h) * 0.02)
        else:
            self.k = nn.Linear(d_model, d_model, bias=False)
            self.v = nn.Linear(d_model, d_model, bias=False)
            self.eta_alpha = nn.Linear(d_model, 2 * H, bias=False)
        self.mem_init = MemoryInit(H, d_h, d_m, opts.memory_arch)

    def memory_kwargs(self, self_target: bool, chunk_size: int) -> dict:
        o = self.opts
        return dict(arch=o.memory_arch, objective=o.objective, precondition=o.precondition, momentum=o.momentum,
                    self_target=self_target, read_after_write=o.read_after_write, chunk_size=chunk_size,
                    detach_inner=o.detach_inner, max_norm=o.memory_max_norm)

    def _gates(self, eta_raw: torch.Tensor, alpha_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """η = η_max σ(· + b_η), α = σ(· + b_α) per head; inputs [B, T, H]."""
        eta = self.opts.eta_max * torch.sigmoid(eta_raw + self.b_eta)
        alpha = torch.sigmoid(alpha_raw + self.b_alpha) if self.opts.retention else torch.ones_like(eta)
        return eta, alpha

    def _projection_gates(self, eta: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates of the projection memories' writes: M_memory's η, α on a clock slowed by s =
        projection_rate, η_p = s η and α_p = 1 − s (1 − α), so that s scales both what a token
        writes and what it forgets (s = 1: SPEC §3, the same gates; s → 0: frozen memories). An
        ablation of this project (docs/paper_map.md): the projections as a slower level (NL §1)."""
        s = self.opts.projection_rate
        return (eta, alpha) if s == 1.0 else (s * eta, 1.0 - s * (1.0 - alpha))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.H, self.d_h)                   # [B, T, H, d_h]

    def _self_generated(self, xt: torch.Tensor, proj: MemoryState):
        """k, v, η, α (and q) from the projection memories, read at the reference state of each
        projection chunk, and the memories' own DGD writes (SPEC §3 steps 2–3, §4)."""
        P, H, n = self.opts.projection_chunk_size, self.H, self.n_proj
        names = ("W1", "W2") if self.opts.memory_arch == "mlp" else ("W",)
        outs, T = [], xt.shape[1]
        lengths = [L for _, n_chunks, L in segments(T, P, proj.pos) for _ in range(n_chunks)]
        if not self.opts.projection_writes:
            lengths = [T]     # frozen memories: every chunk reads the same state, so one read covers the call
        # split, not xt[:, start:end] per chunk: each slice's backward would add a zero tensor of the
        # whole sequence, quadratic in T for a long call (static CMS; online CMS calls per block)
        for xc in xt.split(lengths, dim=1):
            if proj.pos % P:                  # mid-chunk (streaming): the carried reference
                ref = {w: getattr(proj, "ref_" + w) for w in names}
            else:
                # chunk start: the bounded state is the reference of these reads and of the writes
                # below. Reading the unbounded state let raw values v grow through M_v's own target
                # across chunks, to 1e16 and NaN (docs/paper_map.md, "Bounded memories").
                ref = bound_weights({w: getattr(proj, w) for w in names}, self.opts.memory_max_norm)
                proj = replace(proj, **ref)
            x = xc.transpose(1, 2)                                            # [B, H, L, d_h]
            r = read_grouped(ref, x, n).transpose(1, 2)                      # [B, L, nH, d_h]
            k, v, e, a, *q = r.split(H, dim=2)
            k = _l2norm(k)
            if self.opts.normalize_v:   # this project's default, not SPEC §3's (docs/paper_map.md, "Normalised ...")
                v = _l2norm(v)
            eta, alpha = self._gates((e * self.w_eta).sum(-1), (a * self.w_alpha).sum(-1))
            # Every projection memory writes the same (k, η, α) with its own target M_□(v): one
            # grouped write, no read (only the new state is needed). A piece never crosses a chunk
            # start, so its only bound is the one above: chunk_memory need not project again.
            if self.opts.projection_writes:
                kw = {**self.memory_kwargs(True, P), "max_norm": 0.0}
                _, proj = chunk_memory(None, k, v, *self._projection_gates(eta, alpha), proj, groups=n, **kw)
            outs.append((k, v, eta, alpha, _l2norm(q[0]) if q else None))
        k, v, eta, alpha, q = (torch.cat(t, 1) if t[0] is not None else None for t in zip(*outs))
        return k, v, eta, alpha, q, proj

    def forward(self, x: torch.Tensor, state: SMState | None = None) -> tuple[torch.Tensor, SMState]:
        """x [B, T, D] -> (y [B, T, D], state). Under autocast (bf16 on CUDA, the trainer's default
        there) everything up to the output projection runs in float32: bf16 rounds α ≈ 0.999 to 1
        (no retention) and the fast weights would gather bf16 rounding at every chunk (docs/results.md,
        "On a GPU")."""
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                y, state = self._mix(x.float(), state)
        else:
            y, state = self._mix(x, state)
        return self.out(y), state

    def _mix(self, x: torch.Tensor, state: SMState | None) -> tuple[torch.Tensor, SMState]:
        B, T, D = x.shape
        if state is None:
            state = SMState(None, self.proj_init.state(B) if self.opts.self_modifying else None, self.mem_init.state(B))
        if self.opts.self_modifying:
            xc, tail = chunk_conv(self.w_in(x), self.conv, state.conv)
            xt = self._heads(F.silu(xc))
            k, v, eta, alpha, q, proj = self._self_generated(xt, state.proj)
            if q is None:
                q = _l2norm(self._heads(self.q(x)))
        else:
            xc, tail = chunk_conv(x, self.conv, state.conv)
            xt = F.silu(xc)
            k, v = _l2norm(self._heads(self.k(xt))), self._heads(self.v(xt))
            eta, alpha = self._gates(*self.eta_alpha(xt).split(self.H, dim=-1))
            q, proj = _l2norm(self._heads(self.q(x))), None
        self_target = self.opts.self_modifying and self.opts.self_target
        o, mem = chunk_memory(q, k, v, eta, alpha, state.mem, **self.memory_kwargs(self_target, self.opts.chunk_size))
        return self.norm(o.reshape(B, T, D)) * F.silu(self.gate(x)), SMState(tail, proj, mem)
