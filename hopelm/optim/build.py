"""Optimizer construction: parameter groups, the optimizer family of SPEC §7, the lr schedule.

`--optim.name` picks the optimizer of the hidden weight matrices:

    adamw             torch.optim.AdamW on everything (decay on matrices only)
    adam_memory       AdamAsMemory (NL App. B) on everything, same groups as adamw
    muon              torch.optim.Muon (or our fallback) on hidden matrices + AdamW on the rest
    m3                M3 (NL Algorithm 1) on hidden matrices + AdamW on the rest
    dmgd              DMGD (NL Eq. 50) on hidden matrices + AdamW on the rest
    precond_momentum  PreconditionedMomentum (NL Eq. 46–47) on hidden matrices + AdamW on the rest
    delta_momentum    DeltaMomentum (NL Eq. 48–49) on hidden matrices + AdamW on the rest

"Hidden matrices" are the 2-D weights inside the network body; embeddings, the output head (tied
or not), norms, gains, other vectors and thin kernels go to AdamW, as is usual for Muon. All groups use the
trainer's learning rate; `optim.hidden_lr_scale` multiplies it for the hidden-matrix optimizer.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hopelm.config import OptimConfig
from hopelm.optim.m3 import M3
from hopelm.optim.memories import DMGD, AdamAsMemory, DeltaMomentum, PreconditionedMomentum
from hopelm.optim.muon import make_muon

HEAD_NAMES = ("head", "lm_head", "output")
SPLIT = ("muon", "m3", "dmgd", "precond_momentum", "delta_momentum")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only matrices inside the network: embeddings (and a head tied to them), norms,
    gains and other vectors are not decayed (decaying a gain pulls it towards zero, not towards
    a useful prior)."""
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embed_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices, other matrices, vectors and embeddings), each parameter once.

    Hidden matrices are the 2-D weights of the network body with both sides > 4: what Muon/M3
    orthogonalize. Other matrices (decayed, on AdamW) are an untied output head and thin or ≥3-D
    weights such as short-convolution kernels, for which orthogonalization means nothing.
    """
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head_ids = {id(p) for name, p in model.named_parameters(remove_duplicate=False)
                if name.split(".")[0] in HEAD_NAMES}
    hidden, head, rest, seen = [], [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in embed_ids or p.dim() < 2:
            rest.append(p)
        elif id(p) in head_ids or p.dim() != 2 or min(p.shape) <= 4:
            head.append(p)
        else:
            hidden.append(p)
    return hidden, head, rest


class MultiOptimizer:
    """Several optimizers stepped as one (e.g. Muon on matrices + AdamW on the rest).

    Looks like a torch optimizer to the trainer and the checkpoint code: `param_groups` is the
    concatenation of the children's groups (the trainer writes group["lr"] into them), and
    state_dict() = {"optimizers": [child.state_dict(), ...]}. A group's "lr_scale" multiplies its
    lr for the duration of step().
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], names: list[str]):
        self.optimizers, self.names = optimizers, names

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            base = [g["lr"] for g in opt.param_groups]
            for g in opt.param_groups:
                g["lr"] = g["lr"] * g.get("lr_scale", 1.0)
            try:
                opt.step()
            finally:
                for g, lr in zip(opt.param_groups, base):
                    g["lr"] = lr
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state.get("names", [])) != self.names:
            raise ValueError(f"optimizer state is for {state.get('names')}, this run builds {self.names}.")
        for opt, sd in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)

    def __repr__(self) -> str:
        return f"MultiOptimizer({', '.join(f'{n}: {type(o).__name__}' for n, o in zip(self.names, self.optimizers))})"


def hidden_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    group = [{"params": params, "weight_decay": cfg.weight_decay, "lr_scale": cfg.hidden_lr_scale}]
    if cfg.name == "muon":
        return make_muon(group, impl=cfg.muon_impl, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         momentum=cfg.momentum, nesterov=cfg.nesterov, ns_steps=cfg.ns_steps,
                         adjust_lr_fn="match_rms_adamw")
    if cfg.name == "m3":
        return M3(group, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), beta3=cfg.m3_beta3, alpha=cfg.m3_alpha,
                  f=cfg.m3_f, ns_steps=cfg.ns_steps, eps=cfg.eps, weight_decay=cfg.weight_decay,
                  accumulate=cfg.m3_accumulate, update_rms=cfg.update_rms)
    if cfg.name == "dmgd":
        return DMGD(group, lr=cfg.lr, momentum=cfg.momentum, hidden=cfg.dmgd_hidden, inner_lr=cfg.dmgd_lr,
                    eps=cfg.eps, weight_decay=cfg.weight_decay, update_rms=cfg.update_rms)
    if cfg.name in ("precond_momentum", "delta_momentum"):
        cls = PreconditionedMomentum if cfg.name == "precond_momentum" else DeltaMomentum
        delta = 0.0 if cfg.name == "precond_momentum" else cfg.delta
        return cls(group, lr=cfg.lr, momentum=cfg.momentum, beta2=cfg.beta2, eps=cfg.eps,
                   weight_decay=cfg.weight_decay, precond=cfg.precond, delta=delta)
    raise ValueError(f"optim.name={cfg.name!r} is not a known optimizer.")


def build_optimizer(model: nn.Module, cfg: OptimConfig):
    """The optimizer for `model`: a torch optimizer, or a MultiOptimizer for the split families."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                 betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.name == "adam_memory":
        return AdamAsMemory(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.name not in SPLIT:
        raise ValueError(f"optim.name={cfg.name!r} is not a known optimizer.")
    hidden, head, rest = split_params(model)
    adam_groups = [g for g in ({"params": head, "weight_decay": cfg.weight_decay},
                               {"params": rest, "weight_decay": 0.0}) if g["params"]]
    adamw = torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if not hidden:
        return adamw
    return MultiOptimizer([hidden_optimizer(hidden, cfg), adamw], [cfg.name, "adamw"])


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Linear warmup for `warmup_steps`, then cosine decay to lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
