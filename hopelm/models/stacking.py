"""Ad-hoc level stacking, NL §7.3 (SPEC §5): the feed-forward MLPs of a pretrained model become
the levels of a Continuum Memory System initialised from the pretrained weights.

    transformer     -> hope_attention       (the pretrained attention kept)
    titans          -> titans_cms           (the pretrained mixer kept)
    gated_deltanet  -> gated_deltanet_cms

How the levels are initialised, so that with η^(ℓ) = 0 the stacked model reproduces the original
exactly: a plain block computes h + FFN(norm2(h)); the sequential (and nested) CMS computes
h ← h + MLP_ℓ(norm_ℓ(h)) for every level. Every level gets the pretrained FFN's gate, up and down
and norm2's gain, and every level but one (`pretrained_level`, by default the slowest) has its
down-projection set to zero. A zero down-projection makes a level's output exactly 0, so the chain
is h + 0 + ... + FFN(norm2(h)): the original block, bit for bit. Copying the full MLP into every
level would add it K times, which no choice of the other weights of the sequential chain undoes.
The zero levels still learn in context at once: the gradient of their down-projection is
silu(gate x)·(up x) times the upstream gradient, not zero (the same reason LoRA starts B at zero).
The independent variant uses the same initialisation (its mix weights w_ℓ stay 1); the head-wise
variant cannot be stacked (a level there reads only d/K channels, the pretrained MLP reads all).
"""
from __future__ import annotations

import dataclasses

import torch

from hopelm.config import ConfigError
from hopelm.layers.mlp import SwiGLU
from hopelm.models.lm import LM
from hopelm.models.registry import model_from_config

STACKED = {"transformer": "hope_attention", "titans": "titans_cms", "gated_deltanet": "gated_deltanet_cms"}


def stack_levels(model: LM, periods: list[int], lrs: list[float], variant: str = "sequential",
                 momentum: float = 0.0, pretrained_level: int = -1) -> LM:
    """The CMS counterpart of `model` (NL §7.3): same mixers, embeddings and head; each block's
    FFN becomes len(periods) CMS levels with periods C^(ℓ) and inner rates η^(ℓ) (Eq. 71),
    initialised as the module docstring says. Returned on the device and dtype of `model`."""
    name = model.cfg.name
    if name not in STACKED:
        raise ConfigError(f"model.name={name!r} cannot be stacked: only models with a static feed-forward "
                          f"can ({', '.join(STACKED)}).")
    if variant == "headwise":
        raise ConfigError("cms_variant='headwise' cannot be stacked: its levels read only a slice of the "
                          "channels the pretrained MLP reads (use sequential, nested or independent).")
    K = len(periods)
    if not -K <= pretrained_level < K:
        raise ConfigError(f"pretrained_level={pretrained_level} is not one of the {K} CMS levels.")
    keep = pretrained_level % K
    ffn = model.blocks[0].ffn
    if not isinstance(ffn, SwiGLU):  # pragma: no cover - every stackable model has a SwiGLU FFN
        raise ConfigError(f"model {name!r} has no SwiGLU feed-forward to stack.")
    cfg = dataclasses.replace(model.cfg, name=STACKED[name], cms_periods=list(periods), cms_lrs=list(lrs),
                              cms_hidden=ffn.up.weight.shape[0], cms_variant=variant, cms_momentum=momentum)
    stacked = model_from_config(cfg)          # validates the CMS settings with one clear sentence
    ref = next(model.parameters())
    stacked.to(device=ref.device, dtype=ref.dtype)

    state = {}
    target = stacked.state_dict()
    for key, t in model.state_dict().items():
        parts = key.split(".")                # blocks.<b>.<norm2 | ffn>.<...>
        if parts[0] != "blocks" or parts[2] not in ("norm2", "ffn"):
            state[key] = t                    # embeddings, head, final norm, norm1, mixer: unchanged
            continue
        b = parts[1]
        if parts[2] == "norm2":               # the FFN's pre-norm gain -> every level's pre-norm
            for j in range(len(stacked.blocks[int(b)].ffn.norms)):
                state[f"blocks.{b}.ffn.norms.{j}.weight"] = t
        else:                                 # blocks.<b>.ffn.<gate|up|down>.weight
            for j in range(K):
                zero = parts[3] == "down" and j != keep
                state[f"blocks.{b}.ffn.levels.{j}.{parts[3]}.weight"] = torch.zeros_like(t) if zero else t
    for key in target:                        # the independent variant's mix weights keep w_ℓ = 1
        if key.endswith(".ffn.mix"):
            state[key] = target[key]
    stacked.load_state_dict(state)           # strict: every weight of the stacked model is accounted for
    return stacked.train(model.training)
