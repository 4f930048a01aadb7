"""Continuum Memory System, NL §7 (Eq. 70–74), as SPEC §5 defines it.

K SwiGLU levels; level ℓ has a period C^(ℓ) (0 = static, a plain FFN) and an inner learning rate
η^(ℓ). Online levels keep learning in context: every C^(ℓ) tokens their per-sequence fast weights
take one step on the task loss of the tokens of that period (Eq. 71),

    θ^(ℓ) ← θ^(ℓ) − η^(ℓ) Σ_{t in period} ∇_θ L_t      (SGD, optionally with momentum),

where L_t is the next-token cross-entropy at position t. This module computes the levels given
their current weights; the language model's block loop (models/lm.py) obtains the gradients and
calls `CMS.accumulate` at block ends, because only it sees the loss.

Nested variant (Eq. 72; levels fastest first, periods C^(ℓ+1) a multiple of C^(ℓ)): level ℓ+1 owns
the initial state θ_init^(ℓ) of level ℓ. Level ℓ learns by Eq. 71 from θ_init^(ℓ); at every
boundary of level ℓ+1 the owner moves the initial state toward where level ℓ went and level ℓ
restarts from it (first order, Reptile / Lookahead):

    θ_init^(ℓ) ← θ_init^(ℓ) + ε (θ^(ℓ) − θ_init^(ℓ)),  ε = η^(ℓ+1) / η^(ℓ);  θ^(ℓ) ← θ_init^(ℓ).

Without inner momentum θ^(ℓ) − θ_init^(ℓ) = −η^(ℓ) Σ g, so the move is
−η^(ℓ+1) Σ_{t in the period C^(ℓ+1)} ∇_{θ^(ℓ)} L_t: Eq. 71 for the owner with its own rate, on the
first-order meta-gradient of the initial state (as the outer optimizer's gradient of θ_0, SPEC §5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hopelm.layers.mlp import SwiGLU
from hopelm.layers.norm import RMSNorm

Weights = dict[str, torch.Tensor]   # {"gate": [B, h, d], "up": [B, h, d], "down": [B, d, h]} per sequence


@dataclass
class CMSState:
    """Per-sequence fast-weight increments of the online levels (None for static levels).
    The weights in use are θ_0 + delta; `acc` is the gradient summed since the level's last
    update, `mom` the inner SGD momentum, `updates` how many updates each level has made.
    Nested variant: `init[j]` is θ_init − θ_0 of level j−1, a state of its owner, level j
    (indexed by the owner so that `hopelm levels` counts its changes as level j's)."""
    delta: list[Weights | None]
    acc: list[Weights | None]
    mom: list[Weights | None]
    init: list[Weights | None]
    updates: list[int]


class CMS(nn.Module):
    """The feed-forward half of a HOPE block. It owns its residuals: `forward(h)` returns the
    new residual stream, not an increment.

    variants: `sequential` (Eq. 70/73, h ← h + MLP_ℓ(norm_ℓ(h)), fastest level first),
    `independent` (Eq. 74, y = x + Σ_ℓ w_ℓ MLP_ℓ(norm(x))), `headwise` (channels split into K
    groups, level ℓ owns group ℓ), `nested` (Eq. 72: the sequential forward, and each level
    owns the initial state of the next faster one, see the module docstring)."""

    def __init__(self, d_model: int, hidden: int, periods: list[int], lrs: list[float],
                 variant: str = "sequential", momentum: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.periods, self.lrs, self.variant, self.momentum = list(periods), list(lrs), variant, momentum
        K = len(periods)
        width = d_model // K if variant == "headwise" else d_model
        self.width = width
        self.levels = nn.ModuleList(SwiGLU(width, hidden) for _ in range(K))
        # sequential / nested: a pre-norm per level; independent / headwise: one shared pre-norm.
        per_level = variant in ("sequential", "nested")
        self.norms = nn.ModuleList(RMSNorm(d_model, eps) for _ in range(K if per_level else 1))
        if variant == "independent":
            self.mix = nn.Parameter(torch.ones(K))   # w_ℓ of Eq. 74

    @property
    def online(self) -> list[int]:
        """Indices of the levels that learn in context (period > 0 and a non-zero rate)."""
        return [i for i, (p, lr) in enumerate(zip(self.periods, self.lrs)) if p > 0 and lr != 0.0]

    @property
    def owned(self) -> list[int]:
        """Nested variant: the online levels ℓ whose next slower level has a period, and so owns
        θ_init^(ℓ) and restarts level ℓ at its boundaries. A static owner (period 0) owns nothing;
        an owner with period > 0 and η = 0 keeps θ_init^(ℓ) = θ_0^(ℓ) (a periodic reset)."""
        if self.variant != "nested":
            return []
        return [i for i in self.online if i + 1 < len(self.periods) and self.periods[i + 1] > 0]

    # ---------------------------------------------------------------------------------------
    def init_state(self, batch: int) -> CMSState:
        def zeros(i: int) -> Weights:
            lvl = self.levels[i]
            return {n: torch.zeros(batch, *getattr(lvl, n).weight.shape, device=lvl.up.weight.device,
                                   dtype=lvl.up.weight.dtype) for n in ("gate", "up", "down")}
        on, K = set(self.online), len(self.levels)
        # θ_init^(j−1) is stored only when its owner j learns; a frozen owner resets to θ_0.
        moving = {i + 1 for i in self.owned if self.lrs[i + 1] != 0.0}
        return CMSState([zeros(i) if i in on else None for i in range(K)],
                        [zeros(i) if i in on else None for i in range(K)],
                        [zeros(i) if i in on and self.momentum else None for i in range(K)],
                        [zeros(j - 1) if j in moving else None for j in range(K)], [0] * K)

    def fast_weights(self, state: CMSState, require_grad: bool) -> list[Weights | None]:
        """θ_0 + delta per online level: new tensors for each block, so that the gradient of a
        block's loss with respect to them covers exactly that block's use of the weights."""
        out: list[Weights | None] = []
        for lvl, delta in zip(self.levels, state.delta):
            if delta is None:
                out.append(None)
                continue
            w = {n: getattr(lvl, n).weight.unsqueeze(0) + d for n, d in delta.items()}
            if require_grad:
                w = {n: t if t.requires_grad else t.detach().requires_grad_() for n, t in w.items()}
            out.append(w)
        return out

    def accumulate(self, state: CMSState, grads: list[Weights | None], pos: int, exact: bool) -> CMSState:
        """Add one block's gradients; levels whose period ends at token count `pos` take their
        step θ ← θ − η (β m + g) (Eq. 71) and clear their accumulator. Nested variant: then a
        level whose owner's period also ends here restarts from its moved initial state (Eq. 72)."""
        delta, acc, mom, updates = list(state.delta), list(state.acc), list(state.mom), list(state.updates)
        init, owned = list(state.init), self.owned
        for i, g in enumerate(grads):
            if g is None:
                continue
            if not exact:
                g = {n: t.detach() for n, t in g.items()}
            acc[i] = {n: acc[i][n] + g[n] for n in g}
            if pos % self.periods[i] == 0:
                step = acc[i]
                if mom[i] is not None:
                    mom[i] = step = {n: self.momentum * mom[i][n] + step[n] for n in step}
                delta[i] = {n: delta[i][n] - self.lrs[i] * step[n] for n in step}
                acc[i] = {n: torch.zeros_like(t) for n, t in acc[i].items()}
                updates[i] += 1
            if i in owned and pos % self.periods[i + 1] == 0:   # a multiple of C^(i): i just stepped
                if init[i + 1] is None:
                    delta[i] = {n: torch.zeros_like(t) for n, t in delta[i].items()}
                else:
                    eps = self.lrs[i + 1] / self.lrs[i]
                    init[i + 1] = delta[i] = {n: a + eps * (delta[i][n] - a) for n, a in init[i + 1].items()}
                if mom[i] is not None:                        # a new inner episode starts afresh
                    mom[i] = {n: torch.zeros_like(t) for n, t in mom[i].items()}
        return CMSState(delta, acc, mom, init, updates)

    # ---------------------------------------------------------------------------------------
    def _level(self, i: int, x: torch.Tensor, w: Weights | None) -> torch.Tensor:
        if w is None:
            return self.levels[i](x)
        # Per-sequence weights: x [B, T, d] with W [B, h, d].
        g = torch.einsum("btd,bhd->bth", x, w["gate"])
        u = torch.einsum("btd,bhd->bth", x, w["up"])
        return torch.einsum("bth,bdh->btd", F.silu(g) * u, w["down"])

    def forward(self, h: torch.Tensor, fast: list[Weights | None] | None = None) -> torch.Tensor:
        fast = fast or [None] * len(self.levels)
        if self.variant in ("sequential", "nested"):
            for i, w in enumerate(fast):
                h = h + self._level(i, self.norms[i](h), w)
            return h
        if self.variant == "independent":
            x = self.norms[0](h)
            return h + sum(self.mix[i] * self._level(i, x, w) for i, w in enumerate(fast))
        # headwise: level i reads and writes only its own channel group.
        parts = [self._level(i, x, w) for i, (x, w) in
                 enumerate(zip(self.norms[0](h).split(self.width, dim=-1), fast))]
        return h + torch.cat(parts, dim=-1)
