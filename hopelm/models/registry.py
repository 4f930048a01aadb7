"""Model registry: a name maps to a function that builds one block of that architecture.

Later architectures (hope, titans, gated_deltanet, hope_attention) join with `@register`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from hopelm.config import ConfigError, ModelConfig
from hopelm.layers.attention import CausalSelfAttention
from hopelm.layers.cms import CMS
from hopelm.layers.self_modifying import MemoryOptions, SelfModifyingMemory
from hopelm.layers.mlp import SwiGLU, swiglu_width
from hopelm.models.lm import LM, Block

BlockFactory = Callable[[ModelConfig, int], Block]
_REGISTRY: dict[str, BlockFactory] = {}


def register(name: str) -> Callable[[BlockFactory], BlockFactory]:
    def wrap(fn: BlockFactory) -> BlockFactory:
        _REGISTRY[name] = fn
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_from_config(cfg: ModelConfig) -> LM:
    if cfg.name not in _REGISTRY:
        raise ConfigError(f"model.name={cfg.name!r} is not a registered model (known: {', '.join(list_models())}).")
    cfg.validate()
    return LM(cfg, _REGISTRY[cfg.name])


def ffn_width(cfg: ModelConfig) -> int:
    return cfg.d_ff or swiglu_width(cfg.d_model)


@register("transformer")
def transformer_block(cfg: ModelConfig, layer: int) -> Block:
    """Transformer++ (SPEC §6): RoPE attention + SwiGLU, RMSNorm, no biases."""
    return Block(cfg, CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.rope_theta),
                 SwiGLU(cfg.d_model, ffn_width(cfg)))


def cms_from_config(cfg: ModelConfig) -> CMS:
    """SPEC §5 levels sized for parameter parity with the transformer's SwiGLU: K sequential
    levels of width d_ff / K (head-wise levels see d_model / K channels, so they keep d_ff)."""
    K = len(cfg.cms_periods)
    hidden = cfg.cms_hidden or (ffn_width(cfg) if cfg.cms_variant == "headwise" else -(-ffn_width(cfg) // K))
    return CMS(cfg.d_model, hidden, cfg.cms_periods, cfg.cms_lrs, cfg.cms_variant, cfg.cms_momentum, cfg.norm_eps)


@register("hope_attention")
def hope_attention_block(cfg: ModelConfig, layer: int) -> Block:
    """HOPE-Attention (SPEC §6): causal softmax attention with RoPE + Continuum Memory System."""
    attention = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.rope_theta)
    attention.double_backward = cfg.cms_meta_grad == "exact"
    return Block(cfg, attention, cms_from_config(cfg))


def memory_options(cfg: ModelConfig, **pinned) -> MemoryOptions:
    """The mixer options from the config; `pinned` fixes what defines a baseline."""
    keys = [f.name for f in dataclasses.fields(MemoryOptions) if f.name != "conv_width"]
    return MemoryOptions(**{**{k: getattr(cfg, k) for k in keys}, **pinned})


def check_cms_alignment(cfg: ModelConfig) -> None:
    """Online CMS periods are block sizes of the model loop; keep them whole memory chunks."""
    online = [p for p, lr in zip(cfg.cms_periods, cfg.cms_lrs) if p > 0 and lr > 0]
    if any(p % cfg.projection_chunk_size for p in online):
        raise ConfigError(f"model.cms_periods={cfg.cms_periods}: online periods must be multiples of "
                          f"model.projection_chunk_size={cfg.projection_chunk_size} (and model.chunk_size).")


@register("hope")
def hope_block(cfg: ModelConfig, layer: int) -> Block:
    """HOPE (SPEC §6): self-modifying Titans (mlp memories, DGD) + Continuum Memory System."""
    check_cms_alignment(cfg)
    return Block(cfg, SelfModifyingMemory(cfg.d_model, cfg.n_heads, memory_options(cfg)), cms_from_config(cfg))


@register("titans")
def titans_block(cfg: ModelConfig, layer: int) -> Block:
    """Titans (SPEC §6): neural mlp memory with static projections, momentum, no DGD, v̂ = v."""
    opts = memory_options(cfg, self_modifying=False, memory_arch="mlp", precondition=False, read_after_write=True)
    return Block(cfg, SelfModifyingMemory(cfg.d_model, cfg.n_heads, opts), SwiGLU(cfg.d_model, ffn_width(cfg)))


@register("gated_deltanet")
def gated_deltanet_block(cfg: ModelConfig, layer: int) -> Block:
    """Gated DeltaNet (SPEC §6): linear memory, static projections, gated delta rule
    S_t = S_{t−1}(α_t I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ (the dot objective with the preconditioner)."""
    opts = memory_options(cfg, self_modifying=False, memory_arch="linear", objective="dot", precondition=True,
                          momentum=0.0, read_after_write=True)
    return Block(cfg, SelfModifyingMemory(cfg.d_model, cfg.n_heads, opts), SwiGLU(cfg.d_model, ffn_width(cfg)))
