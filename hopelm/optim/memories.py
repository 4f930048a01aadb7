"""Optimizers written as associative memories of the gradient stream (NL §4, App. B; SPEC §7).

Each optimizer keeps one or more memories, writes the current gradient into them with one step
of gradient descent on the memory's own (inner) objective, and reads the update out of them:

- `AdamAsMemory` (NL App. B): two l2 memories, of g and of g², each the minimizer of a
  β-discounted regression objective; the ratio of their reads is Adam's update.
- `PreconditionedMomentum` (NL Eq. 46–47): the momentum is a memory trained on ⟨m, P g⟩.
- `DeltaMomentum` (NL Eq. 48–49): the same memory under an l2 (delta-rule) objective, which
  adds the forgetting term m(αI − γ ĝĝᵀ): before writing g, the memory erases what it holds along g.
- `DMGD`, deep momentum gradient descent (NL Eq. 50): the momentum is an MLP m(·) that maps the
  gradient to the update and is trained online on the dot-product objective with retention α.

Conventions shared with the rest of hopelm: every group has an "lr" (the trainer writes it each
step from the schedule); weight decay is decoupled, W ← W (1 − η λ); state holds only tensors and
plain numbers so that checkpoints store it as safetensors + JSON.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hopelm.optim.m3 import check_unit


def _check_common(owner: str, lr: float, eps: float, weight_decay: float) -> None:
    if lr < 0:
        raise ValueError(f"{owner}: lr={lr} must be >= 0.")
    if eps <= 0:
        raise ValueError(f"{owner}: eps={eps} must be > 0.")
    if weight_decay < 0:
        raise ValueError(f"{owner}: weight_decay={weight_decay} must be >= 0.")


class _MemoryOptimizer(torch.optim.Optimizer):
    """step(): closure handling, decoupled weight decay, and a per-parameter `_update` hook."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    self._init_state(p, group, state)
                state["step"] += 1
                update = self._update(p, p.grad, group, state)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss

    def _init_state(self, p, group, state) -> None:
        raise NotImplementedError

    def _update(self, p, g, group, state) -> torch.Tensor:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Adam (NL App. B)


def l2_memory_write(memory: torch.Tensor, weight: torch.Tensor | float, value: torch.Tensor,
                    beta: float) -> float:
    """One write into an l2 associative memory of a stream (v_1, ..., v_t).

    The memory is the minimizer of the discounted regression objective
        L_t(m) = Σ_i (1 − β) β^{t−i} ½ ‖m − v_i‖²,
    whose total weight is Z_t = 1 − β^t. Going from L_{t−1} to L_t is one gradient step on the
    new term with the optimal step size η_t = (1 − β)/Z_t:
        m_t = m_{t−1} − η_t (m_{t−1} − v_t),
    after which m_t is again the exact minimizer (the weighted mean of the stream). In Adam's terms
    m_t is the bias-corrected moment m̂_t. Updates `memory` in place and returns Z_t.
    """
    z = beta * weight + (1 - beta)
    memory.sub_(memory - value, alpha=(1 - beta) / z)
    return z


class AdamAsMemory(_MemoryOptimizer):
    """Adam as the optimal l2 associative memory of the gradient stream (NL App. B).

    Memory 1 stores the gradients, memory 2 their squares (both via `l2_memory_write`); the update
    reads m̂ and v̂ and applies Δ = m̂ / (√v̂ + ε). This is exactly torch.optim.Adam (and, with
    weight_decay > 0, AdamW: the decay is decoupled), which the tests check step by step.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        _check_common("AdamAsMemory", lr, eps, weight_decay)
        check_unit("AdamAsMemory: beta1", betas[0])
        check_unit("AdamAsMemory: beta2", betas[1])
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _init_state(self, p, group, state) -> None:
        state["grad_memory"] = torch.zeros_like(p)       # m̂: memory of g
        state["square_memory"] = torch.zeros_like(p)     # v̂: memory of g²
        state["grad_weight"] = 0.0                       # Z of each memory (1 − β^t)
        state["square_weight"] = 0.0

    def _update(self, p, g, group, state) -> torch.Tensor:
        b1, b2 = group["betas"]
        state["grad_weight"] = l2_memory_write(state["grad_memory"], state["grad_weight"], g, b1)
        state["square_weight"] = l2_memory_write(state["square_memory"], state["square_weight"], g * g, b2)
        return state["grad_memory"] / (state["square_memory"].sqrt() + group["eps"])


# --------------------------------------------------------------------------------------------
# Momentum with a preconditioner, and its delta-rule version (NL Eq. 46–49)


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    """A view with the keys as rows: [rows, features]; a vector is a single row."""
    return t.reshape(1, -1) if t.dim() < 2 else t.reshape(t.shape[0], -1)


class PreconditionedMomentum(_MemoryOptimizer):
    """Momentum as a memory of preconditioned gradients (NL Eq. 46–47), with optional delta rule.

        m ← m (αI − γ ĝĝᵀ) + (1 − α) P g,      W ← W − η m

    Eq. 46 writes m ← α m − η P g with the step size inside the memory; we keep η outside (as
    torch's SGD does, so the schedule can change it) and damp the write by (1 − α) so that the
    update has the scale of an AdamW step. P is diagonal: P g = g / (√v̂ + ε) with v̂ the
    bias-corrected EMA of g² (precond="rms"), or the identity (precond="none").

    γ = 0 is Eq. 46–47 (objective ⟨m, P g⟩, plain retention α). γ > 0 is the delta momentum of
    Eq. 48–49: under the l2 objective the memory first erases its content along the gradient.
    For a matrix parameter the gradient's rows are the keys, ĝĝᵀ := GᵀG / ‖G‖²_F (contractive for
    γ ≤ 1), so every row of m forgets along the input directions the new gradient writes to.
    """

    def __init__(self, params, lr: float = 3e-3, momentum: float = 0.9, beta2: float = 0.95,
                 eps: float = 1e-8, weight_decay: float = 0.0, precond: str = "rms", delta: float = 0.0):
        _check_common(type(self).__name__, lr, eps, weight_decay)
        check_unit(f"{type(self).__name__}: momentum", momentum)
        check_unit(f"{type(self).__name__}: beta2", beta2)
        if precond not in ("rms", "none"):
            raise ValueError(f"{type(self).__name__}: precond={precond!r} must be 'rms' or 'none'.")
        if not 0.0 <= delta <= 1.0:
            raise ValueError(f"{type(self).__name__}: delta={delta} must be in [0, 1].")
        super().__init__(params, dict(lr=lr, momentum=momentum, beta2=beta2, eps=eps,
                                      weight_decay=weight_decay, precond=precond, delta=delta))

    def _init_state(self, p, group, state) -> None:
        state["momentum_buffer"] = torch.zeros_like(p)
        if group["precond"] == "rms":
            state["square_avg"] = torch.zeros_like(p)

    def _update(self, p, g, group, state) -> torch.Tensor:
        alpha, m = group["momentum"], state["momentum_buffer"]
        pg = g
        if group["precond"] == "rms":
            v = state["square_avg"]
            v.mul_(group["beta2"]).addcmul_(g, g, value=1 - group["beta2"])
            pg = g / ((v / (1 - group["beta2"] ** state["step"])).sqrt() + group["eps"])
        if group["delta"]:
            gm, mm = _as_matrix(g), _as_matrix(m)                       # [R, C]
            norm2 = gm.pow(2).sum().clamp(min=1e-30)
            erase = (mm @ gm.mT) @ gm / norm2                          # m ĝĝᵀ, [R, C]
            mm.mul_(alpha).sub_(erase, alpha=group["delta"])
        else:
            m.mul_(alpha)
        m.add_(pg, alpha=1 - alpha)
        return m


class DeltaMomentum(PreconditionedMomentum):
    """Delta-rule momentum (NL Eq. 48–49): m ← m(αI − γ ĝĝᵀ) + (1 − α) P g, γ = `delta` (default 1)."""

    def __init__(self, params, lr: float = 3e-3, momentum: float = 0.9, beta2: float = 0.95,
                 eps: float = 1e-8, weight_decay: float = 0.0, precond: str = "rms", delta: float = 1.0):
        super().__init__(params, lr=lr, momentum=momentum, beta2=beta2, eps=eps,
                         weight_decay=weight_decay, precond=precond, delta=delta)


# --------------------------------------------------------------------------------------------
# Deep momentum (NL Eq. 50)


class DMGD(_MemoryOptimizer):
    """Deep Momentum Gradient Descent (NL Eq. 50): W ← W + m_{i+1}(u_i),
    m_{i+1} = α m_i − η_m ∇L²(m_i; u_i), with u_i the gradient.

    The memory, one per parameter tensor, reads each gradient row u_r (the keys; a vector is one
    row) through a residual MLP with a per-coordinate bias:

        m(u)_r = b_r + W2 silu(W1 u_r),    b: like the parameter, W1: [h, C], W2: [C, h]

    and is trained by one GD step per outer step on the dot-product objective of momentum,
    L²(m; u) = Σ_r ⟨m(u)_r, u_r⟩ (bias gradient u, per coordinate; the shared W1, W2 average over
    the rows), with retention α on every memory parameter. The bias path alone is exactly
    classical momentum (b ← α b − η_m u, the linear memory of NL §4); `hidden=0` keeps only it, and
    with normalize=False, update_rms=0, η_m = 1 DMGD is torch's SGD with momentum. The MLP path adds
    an associative read: past gradients recalled in proportion to the similarity of their hidden
    features to the current one.

    With `normalize` (default) the keys are u = g / rms(g), so the memory sees scale-free inputs;
    with update_rms > 0 the read is rescaled per tensor to that RMS (an AdamW-sized step).
    """

    def __init__(self, params, lr: float = 3e-3, momentum: float = 0.9, hidden: int = 16,
                 inner_lr: float = 0.1, eps: float = 1e-8, weight_decay: float = 0.0,
                 normalize: bool = True, update_rms: float = 0.2, init_std: float = 0.5):
        _check_common("DMGD", lr, eps, weight_decay)
        check_unit("DMGD: momentum", momentum)
        if hidden < 0 or inner_lr <= 0 or update_rms < 0:
            raise ValueError(f"DMGD: hidden={hidden} and update_rms={update_rms} must be >= 0 and "
                             f"inner_lr={inner_lr} > 0.")
        super().__init__(params, dict(lr=lr, momentum=momentum, hidden=int(hidden), inner_lr=inner_lr,
                                      eps=eps, weight_decay=weight_decay, normalize=normalize,
                                      update_rms=update_rms, init_std=init_std))

    def _init_state(self, p, group, state) -> None:
        cols = _as_matrix(p).shape[1]
        h = group["hidden"]
        state["bias"] = torch.zeros_like(p)
        if h:
            # deterministic per-shape init, independent of the global RNG (resume stays exact)
            gen = torch.Generator().manual_seed(1009 * cols + h)
            state["w1"] = (torch.randn(h, cols, generator=gen, dtype=torch.float64) / math.sqrt(cols)).to(p)
            state["w2"] = (torch.randn(cols, h, generator=gen, dtype=torch.float64)
                           * group["init_std"] / math.sqrt(h)).to(p)

    def _update(self, p, g, group, state) -> torch.Tensor:
        alpha, eta = group["momentum"], group["inner_lr"]
        u = g
        if group["normalize"]:
            u = g / (g.pow(2).mean().sqrt() + group["eps"])
        bias = state["bias"]
        # write: one GD step on Σ_r ⟨m(u)_r, u_r⟩ with retention α (Eq. 50)
        bias.mul_(alpha).sub_(u, alpha=eta)
        out = bias
        if group["hidden"]:
            w1, w2 = state["w1"], state["w2"]
            um = _as_matrix(u)                                        # [R, C]
            rows = um.shape[0]
            z = um @ w1.mT                                            # [R, h]
            a = F.silu(z)
            # ∂/∂W2 Σ_r ⟨W2 a_r, u_r⟩ = Σ_r u_r a_rᵀ ;  ∂/∂W1 = Σ_r (W2ᵀu_r ⊙ silu'(z_r)) u_rᵀ
            sig = torch.sigmoid(z)
            dz = (um @ w2) * (sig * (1 + z * (1 - sig)))              # [R, h]
            gw2 = um.mT @ a / rows
            gw1 = dz.mT @ um / rows
            w2.mul_(alpha).sub_(gw2, alpha=eta)
            w1.mul_(alpha).sub_(gw1, alpha=eta)
            # read with the updated memory m_{i+1}
            out = bias + (F.silu(um @ w1.mT) @ w2.mT).reshape(bias.shape)
        if group["update_rms"]:
            out = out * (group["update_rms"] / out.pow(2).mean().sqrt().clamp(min=1e-12))
        return -out          # the memory outputs the change of W (W ← W + m); the caller subtracts
