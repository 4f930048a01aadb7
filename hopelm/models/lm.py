"""The language model every hopelm architecture shares: embed -> blocks -> norm -> head.

A block is pre-norm residual: h <- h + mixer(norm(h)); h <- h + ffn(norm(h)) (SPEC §6). Models
differ only in which mixer and feed-forward the registry puts into the blocks, so comparisons
between them are fair. The state of the model is the list of its mixers' states (KV caches or
recurrent memories), passed in and returned explicitly; models with online CMS levels carry an
`LMState` that adds the per-sequence fast weights and the position in the CMS block loop.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hopelm.config import ModelConfig
from hopelm.layers.cms import CMS, CMSState
from hopelm.layers.norm import RMSNorm


class LMOutput(NamedTuple):
    logits: torch.Tensor             # [B, T, V]
    loss: torch.Tensor | None        # mean next-token cross-entropy when targets are given
    state: Any                       # list of per-block mixer states, or an LMState (online CMS)


@dataclass
class LMState:
    """State of a model with online CMS levels (SPEC §5 block loop).

    The sequence is consumed in blocks of `cms_block` tokens (the smallest online period). A
    block's inner update needs the loss of its last token, whose target is the first token of the
    next block, so a block is "taught" when that token arrives; until then its tokens and the
    mixer states at its start are kept here, so that a stream fed in pieces computes exactly what
    one call on the whole stream computes."""
    layers: list[Any]                  # mixer state per block after the last consumed token
    cms: list[CMSState | None]         # fast weights per block
    pos: int                           # tokens consumed so far
    block_tokens: torch.Tensor | None  # [B, n] tokens of the current, not yet taught block
    block_start: list[Any]             # mixer states at the start of that block


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mixer: nn.Module, ffn: nn.Module):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = mixer
        # A CMS owns its pre-norms and residuals (one per level); a plain FFN gets one here.
        self.norm2 = None if isinstance(ffn, CMS) else RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = ffn

    def forward(self, x: torch.Tensor, state: Any = None, fast: Any = None) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer(self.norm1(x), state)
        x = x + y
        if self.norm2 is None:
            return self.ffn(x, fast), state
        return x + self.ffn(self.norm2(x)), state


# Output projections of residual branches get std / sqrt(2 * n_layers) (GPT-2), so the residual
# stream's variance does not grow with depth.
RESIDUAL_OUTPUTS = (".out.weight", ".down.weight")


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

    @property
    def cms_block(self) -> int:
        """Block size of the CMS loop: the smallest online period (0 when no level is online)."""
        periods = [b.ffn.periods[i] for b in self.blocks if isinstance(b.ffn, CMS) for i in b.ffn.online]
        return min(periods, default=0)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                state: Any = None) -> LMOutput:
        if idx.dim() != 2:
            raise ValueError(f"idx must be [batch, time] token ids, got shape {tuple(idx.shape)}.")
        if self.cms_block:
            logits, state = self._forward_online(idx, state)
        else:
            states = state if state is not None else [None] * len(self.blocks)
            if not isinstance(states, list) or len(states) != len(self.blocks):
                raise ValueError(f"state must be the list of {len(self.blocks)} block states a previous call returned.")
            logits, state = self._run(idx, states, None)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return LMOutput(logits, loss, state)

    def _run(self, idx: torch.Tensor, states: list[Any], fast: list[Any] | None):
        x = self.embed(idx)                                   # [B, T, D]
        new_states = []
        for i, (block, s) in enumerate(zip(self.blocks, states)):
            x, s = block(x, s, None if fast is None else fast[i])
            new_states.append(s)
        return self.head(self.norm(x)), new_states            # [B, T, V]

    # ---- online CMS: the block loop of SPEC §5 ---------------------------------------------
    def init_state(self, batch: int) -> LMState:
        cms = [b.ffn.init_state(batch) if isinstance(b.ffn, CMS) else None for b in self.blocks]
        return LMState([None] * len(self.blocks), cms, 0, None, [None] * len(self.blocks))

    def _fast(self, cms: list[CMSState | None], require_grad: bool) -> list[Any]:
        return [None if c is None else b.ffn.fast_weights(c, require_grad) for b, c in zip(self.blocks, cms)]

    def _teach(self, st: LMState, next_token: torch.Tensor, graph) -> list[CMSState | None]:
        """Inner step for the finished block `st.block_tokens` (Eq. 71): gradient of the summed
        next-token losses of the block w.r.t. the fast weights it used. When the block ran in this
        call, its graph is reused; otherwise (a stream fed in pieces, generation) the block is
        recomputed from the mixer states at its start, which gives the same numbers."""
        exact = self.cfg.cms_meta_grad == "exact"
        targets = torch.cat([st.block_tokens[:, 1:], next_token], dim=1)
        outer = torch.is_grad_enabled()       # the outer backward will need the block's graph again
        with torch.enable_grad():
            if graph is not None:
                logits, fast = torch.cat(graph[0], dim=1), graph[1]
            else:
                fast = self._fast(st.cms, require_grad=True)
                logits, _ = self._run(st.block_tokens, st.block_start, fast)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
            keys = [(i, j, n) for i, f in enumerate(fast) if f is not None
                    for j, w in enumerate(f) if w is not None for n in w]
            grads = torch.autograd.grad(loss, [fast[i][j][n] for i, j, n in keys],
                                        retain_graph=(graph is not None and outer) or exact, create_graph=exact)
        per_block: list[Any] = [None if f is None else [None] * len(f) for f in fast]
        for (i, j, n), g in zip(keys, grads):
            per_block[i][j] = {**(per_block[i][j] or {}), n: g}
        return [None if c is None else b.ffn.accumulate(c, per_block[i], st.pos, exact)
                for i, (b, c) in enumerate(zip(self.blocks, st.cms))]

    def _forward_online(self, idx: torch.Tensor, state: LMState | None) -> tuple[torch.Tensor, LMState]:
        if state is not None and not isinstance(state, LMState):
            raise ValueError("state must be the LMState a previous call of this model returned.")
        st = state if state is not None else self.init_state(idx.shape[0])
        C, T = self.cms_block, idx.shape[1]
        graph = None          # (logits pieces, fast weights) of a block that started in this call
        fast = self._fast(st.cms, require_grad=False)
        grad_on = torch.is_grad_enabled()
        out, i = [], 0
        while i < T:
            if st.pos % C == 0:
                if st.block_tokens is not None:   # the previous block is complete: teach it
                    st = LMState(st.layers, self._teach(st, idx[:, i:i + 1], graph), st.pos, None, st.layers)
                # Without autograd (evaluation, prefill), a block taught within this call still runs
                # with a graph, so that _teach reuses it instead of recomputing the block.
                track = grad_on or i + C < T
                fast = self._fast(st.cms, require_grad=track)
                graph = ([], fast) if track else None
                st = LMState(st.layers, st.cms, st.pos, idx[:, :0], st.layers)
            n = min(C - st.pos % C, T - i)
            piece = idx[:, i:i + n]
            with torch.set_grad_enabled(grad_on or graph is not None):
                logits, layers = self._run(piece, st.layers, fast)
            if graph is not None:
                graph[0].append(logits)
            if not grad_on:                       # nothing may depend on a graph the caller did not ask for
                logits, layers = logits.detach(), detach_states(layers)
            out.append(logits)
            st = LMState(layers, st.cms, st.pos + n, torch.cat([st.block_tokens, piece], dim=1), st.block_start)
            i += n
        return torch.cat(out, dim=1), st

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


def detach_states(obj: Any) -> Any:
    """The same states (lists, dataclasses, tensors) cut from the autograd graph."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (list, tuple)):
        return type(obj)(detach_states(o) for o in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: detach_states(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


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
