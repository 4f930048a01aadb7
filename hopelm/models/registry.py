"""Model registry: a name maps to a function that builds one block of that architecture.

Architectures join with `@register`. `titans_cms` and `gated_deltanet_cms` (the baselines' mixers
with a Continuum Memory System as feed-forward) are registered unlisted: they exist so that
`hopelm stack` (models/stacking.py) can turn a trained titans / gated_deltanet into a CMS model
that `hopelm.load` rebuilds, but they are not among the compared models (`list_models()`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from hopelm.config import ConfigError, ModelConfig
from hopelm.layers.attention import CausalSelfAttention
from hopelm.layers.cms import CMS
from hopelm.layers.self_modifying import MemoryOptions, SelfModifyingMemory
from hopelm.layers.mlp import SwiGLU, swiglu_width
from hopelm.models.lm import LM, Block

BlockFactory = Callable[[ModelConfig, int], Block]
_REGISTRY: dict[str, BlockFactory] = {}
_UNLISTED: set[str] = set()


def register(name: str, listed: bool = True) -> Callable[[BlockFactory], BlockFactory]:
    def wrap(fn: BlockFactory) -> BlockFactory:
        _REGISTRY[name] = fn
        if not listed:
            _UNLISTED.add(name)
        return fn
    return wrap


def list_models(unlisted: bool = False) -> list[str]:
    """The compared models; `unlisted=True` adds the stacking targets (titans_cms, ...)."""
    return sorted(n for n in _REGISTRY if unlisted or n not in _UNLISTED)


def model_from_config(cfg: ModelConfig) -> LM:
    if cfg.name not in _REGISTRY:
        raise ConfigError(f"model.name={cfg.name!r} is not a registered model "
                          f"(known: {', '.join(list_models(unlisted=True))}).")
    cfg.validate()
    return LM(cfg, _REGISTRY[cfg.name])


def ffn_width(cfg: ModelConfig) -> int:
    return cfg.d_ff or swiglu_width(cfg.d_model)


def parity_width(cfg: ModelConfig, mixer: nn.Module, levels: int = 1, headwise: bool = False) -> int:
    """Feed-forward hidden width that gives a block the parameter count of a Transformer++ block
    of the same d_model (fair comparisons, SPEC §6): whatever the mixer holds beyond attention's
    4·d² comes out of the feed-forward, shared equally by its `levels`."""
    D = cfg.d_model
    surplus = sum(p.numel() for p in mixer.parameters()) - 4 * D * D
    per_unit = 3 * D if headwise else 3 * D * levels        # parameters per unit of hidden width
    width = (3 * D * ffn_width(cfg) - surplus) / per_unit
    if width < 8:
        raise ConfigError(f"model {cfg.name!r}: the mixer alone exceeds a transformer block's parameters at "
                          f"d_model={D}; set model.d_ff or model.cms_hidden explicitly.")
    return 4 * round(width / 4)


def cms_from_config(cfg: ModelConfig, mixer: nn.Module) -> CMS:
    """SPEC §5 levels; unless model.cms_hidden is set, sized for parameter parity (parity_width)."""
    K, headwise = len(cfg.cms_periods), cfg.cms_variant == "headwise"
    hidden = cfg.cms_hidden or parity_width(cfg, mixer, K, headwise)
    return CMS(cfg.d_model, hidden, cfg.cms_periods, cfg.cms_lrs, cfg.cms_variant, cfg.cms_momentum, cfg.norm_eps)


def static_ffn(cfg: ModelConfig, mixer: nn.Module) -> SwiGLU:
    return SwiGLU(cfg.d_model, parity_width(cfg, mixer))


@register("transformer")
def transformer_block(cfg: ModelConfig, layer: int) -> Block:
    """Transformer++ (SPEC §6): RoPE attention + SwiGLU, RMSNorm, no biases."""
    return Block(cfg, CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.rope_theta),
                 SwiGLU(cfg.d_model, ffn_width(cfg)))


@register("hope_attention")
def hope_attention_block(cfg: ModelConfig, layer: int) -> Block:
    """HOPE-Attention (SPEC §6): causal softmax attention with RoPE + Continuum Memory System."""
    attention = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.rope_theta)
    attention.double_backward = cfg.cms_meta_grad == "exact"
    return Block(cfg, attention, cms_from_config(cfg, attention))


def memory_options(cfg: ModelConfig, **pinned) -> MemoryOptions:
    """The mixer options from the config; `pinned` fixes what defines a baseline."""
    keys = [f.name for f in dataclasses.fields(MemoryOptions) if f.name != "conv_width"]
    return MemoryOptions(**{**{k: getattr(cfg, k) for k in keys}, **pinned})


def check_cms_alignment(cfg: ModelConfig, key: str = "projection_chunk_size") -> None:
    """Online CMS periods are block sizes of the model loop; keep them whole memory chunks
    (`key`: the largest chunk of the mixer; hope's projection memories, else M_memory's)."""
    online = [p for p, lr in zip(cfg.cms_periods, cfg.cms_lrs) if p > 0 and lr > 0]
    if any(p % getattr(cfg, key) for p in online):
        also = " (and model.chunk_size)" if key != "chunk_size" else ""
        raise ConfigError(f"model.cms_periods={cfg.cms_periods}: online periods must be multiples of "
                          f"model.{key}={getattr(cfg, key)}{also}.")


@register("hope")
def hope_block(cfg: ModelConfig, layer: int) -> Block:
    """HOPE (SPEC §6): self-modifying Titans (mlp memories, DGD) + Continuum Memory System."""
    check_cms_alignment(cfg)
    mixer = SelfModifyingMemory(cfg.d_model, cfg.n_heads, memory_options(cfg))
    return Block(cfg, mixer, cms_from_config(cfg, mixer))


def titans_mixer(cfg: ModelConfig) -> SelfModifyingMemory:
    """Titans (SPEC §6): neural mlp memory with static projections, momentum, no DGD, v̂ = v."""
    opts = memory_options(cfg, self_modifying=False, memory_arch="mlp", precondition=False, read_after_write=True)
    return SelfModifyingMemory(cfg.d_model, cfg.n_heads, opts)


def gated_deltanet_mixer(cfg: ModelConfig) -> SelfModifyingMemory:
    """Gated DeltaNet (SPEC §6): linear memory, static projections, gated delta rule
    S_t = S_{t−1}(α_t I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ (the dot objective with the preconditioner)."""
    opts = memory_options(cfg, self_modifying=False, memory_arch="linear", objective="dot", precondition=True,
                          momentum=0.0, read_after_write=True)
    return SelfModifyingMemory(cfg.d_model, cfg.n_heads, opts)


@register("titans")
def titans_block(cfg: ModelConfig, layer: int) -> Block:
    """Titans (SPEC §6): the Titans neural memory + a SwiGLU feed-forward."""
    mixer = titans_mixer(cfg)
    return Block(cfg, mixer, static_ffn(cfg, mixer))


@register("gated_deltanet")
def gated_deltanet_block(cfg: ModelConfig, layer: int) -> Block:
    """Gated DeltaNet (SPEC §6): the gated delta rule + a SwiGLU feed-forward."""
    mixer = gated_deltanet_mixer(cfg)
    return Block(cfg, mixer, static_ffn(cfg, mixer))


@register("titans_cms", listed=False)
def titans_cms_block(cfg: ModelConfig, layer: int) -> Block:
    """The Titans mixer + CMS: what `hopelm stack` makes of a trained titans (NL §7.3)."""
    check_cms_alignment(cfg, "chunk_size")
    mixer = titans_mixer(cfg)
    return Block(cfg, mixer, cms_from_config(cfg, mixer))


@register("gated_deltanet_cms", listed=False)
def gated_deltanet_cms_block(cfg: ModelConfig, layer: int) -> Block:
    """The Gated DeltaNet mixer + CMS: what `hopelm stack` makes of a trained gated_deltanet."""
    check_cms_alignment(cfg, "chunk_size")
    mixer = gated_deltanet_mixer(cfg)
    return Block(cfg, mixer, cms_from_config(cfg, mixer))
