"""M3, Multi-scale Momentum Muon (NL Algorithm 1, SPEC §7).

Two momentum memories of the gradient stream at two frequencies, both orthogonalized:

    fast:   M1 ← β1 M1 + (1 − β1) g_t                         every step
    second: V  ← β2 V  + (1 − β2) g_t²                        every step
    slow:   M2 ← β3 M2 + (1 − β3) Σ_{last f steps} g          every f steps (a CMS level of the optimizer)
            O1 = NS_T(M1),  O2 = NS_T(M2)
    Θ ← Θ (1 − η λ) − η · s · (O1 + α O2) / (√V̂ + ε)

`accumulate="ema"` (default, DESIGN decision) uses the moving averages above with V̂ = V / (1 − β2^t);
`accumulate="sum"` is Algorithm 1's literal running sums M1 ← M1 + β1 g, V ← V + β2 g²,
M2 ← M2 + β3 Σ g, with V̂ = V.

As in Algorithm 1, M2 and O2 change only at the end of a slow period (steps f, 2f, ...) and O2 then
stays fixed for the f steps of the next period; during the first period O2 = 0.

Scale `s`: the direction (O1 + α O2)/(√V̂ + ε) has entries of order 1/(√n · |g|), far larger than
an AdamW step for small gradients. With `update_rms > 0` (default 0.2) the direction is rescaled,
per matrix, to that RMS, like torch.optim.Muon's "match_rms_adamw", so M3 shares the AdamW learning
rate; `update_rms = 0` is the literal Algorithm 1 scale (then use a much smaller lr).
"""
from __future__ import annotations

import torch

from hopelm.optim.newton_schulz import QUINTIC, newton_schulz


def check_unit(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value} must be in [0, 1).")


class M3(torch.optim.Optimizer):
    """Multi-scale Momentum Muon (NL Algorithm 1) for 2-D parameters (hidden weight matrices)."""

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 beta3: float = 0.9, alpha: float = 0.5, f: int = 8, ns_steps: int = 5,
                 eps: float = 1e-8, weight_decay: float = 0.0, accumulate: str = "ema",
                 update_rms: float = 0.2, ns_coefficients: tuple[float, float, float] = QUINTIC,
                 ns_dtype: str = "float32"):
        if lr < 0:
            raise ValueError(f"M3: lr={lr} must be >= 0.")
        check_unit("M3: beta1", betas[0])
        check_unit("M3: beta2", betas[1])
        check_unit("M3: beta3", beta3)
        if alpha < 0 or eps <= 0 or weight_decay < 0 or update_rms < 0:
            raise ValueError(f"M3: alpha={alpha}, weight_decay={weight_decay}, update_rms={update_rms} must be "
                             f">= 0 and eps={eps} > 0.")
        if int(f) != f or f < 1:
            raise ValueError(f"M3: the slow frequency f={f} must be an integer >= 1.")
        if ns_steps < 1:
            raise ValueError(f"M3: ns_steps={ns_steps} must be >= 1.")
        if accumulate not in ("ema", "sum"):
            raise ValueError(f"M3: accumulate={accumulate!r} must be 'ema' or 'sum'.")
        if ns_dtype not in ("float32", "bfloat16", "float64"):
            raise ValueError(f"M3: ns_dtype={ns_dtype!r} must be float32, bfloat16 or float64.")
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, alpha=alpha, f=int(f), ns_steps=ns_steps,
                        eps=eps, weight_decay=weight_decay, accumulate=accumulate, update_rms=update_rms,
                        ns_coefficients=tuple(ns_coefficients), ns_dtype=ns_dtype)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"M3 only takes 2-D parameters, got shape {tuple(p.shape)}; "
                                     "give vectors and embeddings to AdamW.")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            b3, alpha, f, lr = group["beta3"], group["alpha"], group["f"], group["lr"]
            ema = group["accumulate"] == "ema"
            ns_dtype = getattr(torch, group["ns_dtype"])

            def ns(m: torch.Tensor) -> torch.Tensor:
                return newton_schulz(m, group["ns_steps"], group["ns_coefficients"], dtype=ns_dtype)

            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    for key in ("m1", "v", "m2", "o2", "chunk"):   # chunk: Σ g over the current slow period
                        state[key] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m1, v, chunk = state["m1"], state["v"], state["chunk"]
                chunk.add_(g)
                if ema:
                    m1.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    v_hat = v / (1 - b2 ** t)
                else:
                    m1.add_(g, alpha=b1)
                    v.addcmul_(g, g, value=b2)
                    v_hat = v
                direction = ns(m1)                                   # O1
                if alpha:
                    direction = direction.add(state["o2"], alpha=alpha)
                direction = direction / (v_hat.sqrt() + group["eps"])
                if group["update_rms"]:
                    rms = direction.pow(2).mean().sqrt().clamp(min=1e-12)
                    direction = direction * (group["update_rms"] / rms)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(direction, alpha=-lr)
                if t % f == 0:                                       # end of a slow period
                    m2 = state["m2"]
                    if ema:
                        m2.mul_(b3).add_(chunk, alpha=1 - b3)
                    else:
                        m2.add_(chunk, alpha=b3)
                    state["o2"].copy_(ns(m2))                        # O2 for the next f steps
                    chunk.zero_()
        return loss
