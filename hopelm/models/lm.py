"""The language model every hopelm architecture shares: embed -> blocks -> norm -> head.

A block is pre-norm residual: h <- h + mixer(norm(h)); h <- h + ffn(norm(h)) (SPEC §6). Models
differ only in which mixer and feed-forward the registry puts into the blocks, so comparisons
between them are fair. The state of the model is the list of its mixers' states (KV caches or
recurrent memories), passed in and returned explicitly.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hopelm.config import ModelConfig
from hopelm.layers.norm import RMSNorm


class LMOutput(NamedTuple):
    logits: torch.Tensor             # [B, T, V]
    loss: torch.Tensor | None        # mean next-token cross-entropy when targets are given
    state: list[Any]                 # one state per block


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mixer: nn.Module, ffn: nn.Module):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = mixer
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = ffn

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer(self.norm1(x), state)
        x = x + y
        return x + self.ffn(self.norm2(x)), state


# Output projections of residual branches get std / sqrt(2 * n_layers) (GPT-2), so the residual
# stream's variance does not grow with depth.
RESIDUAL_OUTPUTS = ("mixer.out.weight", "ffn.down.weight")


class LM(nn.Module):
    def __init__(self, cfg: ModelConfig, make_block: Callable[[ModelConfig, int], Block]):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (> 0) before building a model; "
                             "hopelm.build_model fills it from the tokenizer.")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(make_block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for every linear and embedding weight; other parameters (norm
        gains, memory initial states) keep the initialisation their layer gave them."""
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = math.sqrt(2 * self.cfg.n_layers) if (name + ".weight").endswith(RESIDUAL_OUTPUTS) else 1.0
                nn.init.normal_(module.weight, std=std / scale)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                state: list[Any] | None = None) -> LMOutput:
        if idx.dim() != 2:
            raise ValueError(f"idx must be [batch, time] token ids, got shape {tuple(idx.shape)}.")
        states = state if state is not None else [None] * len(self.blocks)
        if len(states) != len(self.blocks):
            raise ValueError(f"state has {len(states)} entries but the model has {len(self.blocks)} blocks.")
        x = self.embed(idx)                                   # [B, T, D]
        new_states = []
        for block, s in zip(self.blocks, states):
            x, s = block(x, s)
            new_states.append(s)
        logits = self.head(self.norm(x))                      # [B, T, V]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return LMOutput(logits, loss, new_states)

    # ----------------------------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """Parameter counts by component; tied weights are counted once (as the embedding)."""
        counts: dict[str, int] = {}
        seen: set[int] = set()
        for name, p in self.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name.startswith("blocks."):
                part = name.split(".")[2]
                key = {"norm1": "norms", "norm2": "norms"}.get(part, part)
            else:
                key = name.split(".")[0]
                key = {"norm": "norms"}.get(key, key)
            counts[key] = counts.get(key, 0) + p.numel()
        counts["total"] = sum(counts.values())
        counts["non_embedding"] = counts["total"] - counts.get("embed", 0) - counts.get("head", 0)
        return counts

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, state: list[Any] | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue `idx` [B, T] by `max_new_tokens` sampled tokens, decoding incrementally from
        the model state (the prompt is run once; each new token costs one step)."""
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0.")
        if idx.shape[1] == 0:
            raise ValueError("generate needs a prompt of at least one token.")
        out = self(idx, state=state)
        tokens = [idx]
        for _ in range(max_new_tokens):
            nxt = sample_next(out.logits[:, -1, :], temperature, top_k, top_p, generator)  # [B, 1]
            tokens.append(nxt)
            out = self(nxt, state=out.state)
        return torch.cat(tokens, dim=1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from logits [B, V]; temperature 0 is greedy. top_k keeps the k
    most likely tokens, top_p the smallest set whose probability reaches p (nucleus sampling)."""
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError("Sampling needs temperature >= 0, top_k >= 1 and 0 < top_p <= 1.")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)
