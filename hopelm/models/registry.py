"""Model registry: a name maps to a function that builds one block of that architecture.

Later architectures (hope, titans, gated_deltanet, hope_attention) join with `@register`.
"""
from __future__ import annotations

from typing import Callable

from hopelm.config import ConfigError, ModelConfig
from hopelm.layers.attention import CausalSelfAttention
from hopelm.layers.cms import CMS
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
