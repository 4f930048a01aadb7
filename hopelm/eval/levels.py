"""Nested-learning diagnostics: the measured update frequency of every component (SPEC §1, NL Def. 2).

f_z(H) = (1/H) Σ_t u_z(t), with u_z(t) = 1 iff component z changed when token t was consumed.
We feed a stream token by token, compare every state tensor before and after each token, and
group tensors into components (KV cache, short-conv tail, projection memories, M_memory, each CMS
level). Parameters trained by the outer optimizer do not change at inference: frequency 0, the
slowest level. Levels are numbered from the fastest (level 1) to the slowest.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import torch

# State tensor names -> component names. Momenta and chunk-reference copies are bookkeeping of
# the memory they belong to, so they are not components of their own.
_SKIP = ("ref_", ".S", "acc", "mom")


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _flatten(getattr(obj, f.name), f"{prefix}.{f.name}", out)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _flatten(item, f"{prefix}.{i}", out)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}", out)


def _component(name: str) -> str | None:
    """'state.layers.0.mem.W1' -> 'block 0: M_memory'; None for bookkeeping tensors."""
    parts = name.split(".")
    if any(s in name for s in _SKIP) or parts[1] in ("block_tokens", "block_start"):
        return None
    if parts[1] == "cms":                       # state.cms.<block>.delta.<level>.<w>
        return f"block {parts[2]}: CMS level {parts[4]}"
    block = parts[2] if parts[1] == "layers" else parts[1]
    field = parts[3] if parts[1] == "layers" else parts[2]
    label = {"k": "attention KV cache", "v": "attention KV cache", "conv": "short conv tail",
             "proj": "projection memories M_k, M_v, M_eta, M_alpha", "mem": "M_memory"}.get(field, field)
    return f"block {block}: {label}"


@torch.no_grad()
def measure_levels(model: torch.nn.Module, tokens: torch.Tensor) -> list[dict[str, Any]]:
    """Feed tokens [1, H] one at a time; return one row per component with its measured
    update count, frequency f = updates / H and period 1 / f, sorted fastest first."""
    H = tokens.shape[1]
    changes: dict[str, set[int]] = defaultdict(set)
    state, prev = None, {}
    for t in range(H):
        state = model(tokens[:, t:t + 1], state=state).state
        cur: dict[str, torch.Tensor] = {}
        _flatten(state, "state", cur)
        for name, tensor in cur.items():
            comp = _component(name)
            if comp is None:
                continue
            changes[comp]  # register the component even if it never changes
            old = prev.get(name)
            # Before the first token there is no state: a cache or memory written by token 0 is
            # non-zero, a CMS increment not yet updated is still zero.
            changed = bool(tensor.any()) if old is None else (old.shape != tensor.shape or not torch.equal(old, tensor))
            if changed:
                changes[comp].add(t)
        prev = cur
    rows = []
    for comp, ts in changes.items():
        ts = sorted(ts)
        # The period is the mean gap between updates (H / updates undercounts a period whose
        # last update falls after the stream ends).
        period = (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else (H / len(ts) if ts else None)
        rows.append({"component": comp, "updates": len(ts), "frequency": len(ts) / H, "period": period})
    for i, block in enumerate(model.blocks):          # static CMS levels: plain MLPs, frequency 0
        for j, p in enumerate(getattr(block.ffn, "periods", [])):
            if j not in block.ffn.online:
                rows.append({"component": f"block {i}: CMS level {j} (static)", "updates": 0,
                             "frequency": 0.0, "period": None})
    n_params = sum(p.numel() for p in model.parameters())
    rows.append({"component": f"parameters ({n_params:,}; outer optimizer only)", "updates": 0,
                 "frequency": 0.0, "period": None})
    rows.sort(key=lambda r: (-r["frequency"], r["component"]))
    freqs = sorted({r["frequency"] for r in rows}, reverse=True)
    for r in rows:
        r["level"] = freqs.index(r["frequency"]) + 1
    return rows


def plot_levels(rows: list[dict[str, Any]], path: str) -> None:
    """Bar chart of the frequency spectrum (log scale; frequency-0 components at the floor)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    floor = min([r["frequency"] for r in rows if r["frequency"] > 0], default=1.0) / 10
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    ax.barh([r["component"] for r in rows], [max(r["frequency"], floor) for r in rows], color="tab:blue")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("measured update frequency f (updates per token)")
    ax.set_title("Nested-learning levels: update frequency spectrum")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
