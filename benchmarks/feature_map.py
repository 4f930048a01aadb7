"""Does M_memory keep its input-side weight along a haystack? The size of W2 (mlp) or W (linear) by position.

    python benchmarks/feature_map.py --steps 500 --set self_modifying=false --set objective=dot --set eta_max=1.0

The mlp memory M(x) = x + W1 σ(W2 x) reads through its input-side weight W2: σ(W2 q) is the feature
map of its keys. DGD writes W2 ← W2 (α I − η k kᵀ) − η G2 (NL Eq. 88), so every token shrinks W2
along its key by α − η, and only G2 = ((W1ᵀ e) ⊙ σ'(z)) kᵀ puts anything back. For the linear
memory W is the whole memory and each write η v kᵀ refills it (a gated delta rule); for the mlp
memory nothing refills W2 but that gradient, which is small while W1 is small.

This script trains the S-NIAH passkey model of `hopelm eval niah` (the runner's model: d_model 64,
2 layers, 2 heads, the hope preset plus `--set` overrides; `--steps 0` keeps it untrained), feeds
one test haystack with its needle through it in pieces of the memory's chunk size, and prints per
block and head the RMS row norm ‖W‖_F / √rows of M_memory's input-side weight (W2 or W) and of W1
at chunk starts, relative to its learned initial value. With static projections
(`self_modifying=false`) it also prints how much two positions' keys overlap (`key_overlap`: mean
cosine of k, and of the mlp features σ(W2_0 k)). Writes JSON with --out.

docs/results.md ("Can hope's mlp memory retrieve at all?") quotes both: an untrained mlp memory
loses W2 along the haystack as described, a trained one does not (its outer loop learned to refill
W2), so this mechanism does not explain why the mlp memory retrieves so much worse than the linear one.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hopelm.eval.niah import NIAHTask
from hopelm.eval.runner import collate, small_model, train
from hopelm.eval.tasks_cli import _value
from hopelm.layers.self_modifying import _l2norm
from hopelm.ops.memory import rms_row_norm


def parse_sets(items: list[str]) -> dict:
    """`--set KEY=VALUE` items, read as `hopelm eval --set` reads them."""
    return {k: _value(v) for k, v in (s.split("=", 1) for s in items)}


def trace(model: torch.nn.Module, ids: torch.Tensor) -> list[dict]:
    """Per block, per piece of chunk_size tokens: RMS row norms of M_memory's weights per head at the
    piece's start (the chunk's reference state, before any bound)."""
    piece, mixers = model.cfg.chunk_size, [b.mixer for b in model.blocks]
    rows, state = [], None
    with torch.no_grad():
        for start in range(0, ids.shape[1], piece):
            if state is None:
                mems = [m.mem_init.state(1) for m in mixers]
            else:
                mems = [s.mem for s in (state.layers if hasattr(state, "layers") else state)]
            for i, mem in enumerate(mems):
                row = {"block": i, "pos": start}
                for w in ("W", "W1", "W2"):
                    t = getattr(mem, w, None)
                    if t is not None:
                        row[w] = rms_row_norm(t)[0].tolist()           # [H]
                rows.append(row)
            state = model(ids[:, start:start + piece], state=state).state
    return rows


def mean_cosine(f: torch.Tensor) -> list[float]:
    """Mean cosine between the features of two different positions, per head; f [T, H, n]."""
    f = F.normalize(f, dim=-1).transpose(0, 1)                       # [H, T, n]
    gram, T = f @ f.mT, f.shape[1]
    return ((gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)) / (T * (T - 1))).tolist()


def key_overlap(model: torch.nn.Module, ids: torch.Tensor) -> list[dict]:
    """How much the keys of different positions overlap in what M_memory matches: per block and
    head, the mean cosine between two positions' keys k (what the linear memory's W k reads) and,
    for the mlp memory, between their features σ(W2 k) at the learned initial W2 (what W1 is read
    through). Static projections only (self_modifying=false): k is the mixer's own W_k x̃,
    captured from its projection `k` at every call (a model with online CMS levels runs its blocks
    one call each) and L2-normalised as the mixer does."""
    mixers = [b.mixer for b in model.blocks]
    if any(m.opts.self_modifying for m in mixers):
        raise ValueError("key_overlap needs static projections (--set self_modifying=false).")
    keys: list[list[torch.Tensor]] = [[] for _ in mixers]
    hooks = [m.k.register_forward_hook(lambda mod, a, out, i=i: keys[i].append(out)) for i, m in enumerate(mixers)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    out = []
    with torch.no_grad():
        for i, m in enumerate(mixers):
            k = _l2norm(m._heads(torch.cat(keys[i], dim=1)))[0]        # [T, H, d_h]
            row = {"block": i, "k": mean_cosine(k)}
            if m.opts.memory_arch == "mlp":
                row["silu_W2k"] = mean_cosine(F.silu(torch.einsum("thd,hmd->thm", k, m.mem_init.W2)))
            out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", action="append", default=[], help="model override, e.g. eta_max=1.0")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--train-length", type=int, default=256)
    p.add_argument("--length", type=int, default=1024, help="test haystack length (bytes)")
    p.add_argument("--depth", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    overrides = parse_sets(a.set)
    task = NIAHTask("passkey", train_length=a.train_length, lengths=(a.length,), depths=(a.depth,), n_test=1)
    model = small_model("hope", task.vocab_size, 64, 2, 2, seed=a.seed, **overrides)
    t0 = time.time()
    losses = []
    if a.steps:
        rng = random.Random(f"{task.name}/train/{a.seed}")
        losses = train(model, lambda step: task.train_batch(rng, 32), a.steps, lr=1e-3, warmup=min(50, a.steps // 10))
    model.eval()
    example = task.test_set(random.Random(f"{task.name}/test/{a.seed}"))[0]
    ids, _ = collate([example])
    rows = trace(model, ids)
    print(f"overrides {overrides}; {a.steps} training steps ({time.time() - t0:.0f} s), final train loss "
          f"{losses[-1] if losses else float('nan'):.4f}; haystack of {ids.shape[1]} tokens, needle at depth {a.depth}")
    names = [w for w in ("W", "W2", "W1") if w in rows[0]]
    for block in sorted({r["block"] for r in rows}):
        mine = [r for r in rows if r["block"] == block]
        first = mine[0]
        print(f"block {block}: RMS row norm relative to the initial state, per head")
        print("  pos   " + "  ".join(f"{w + ' h' + str(h):>9}" for w in names for h in range(len(first[w]))))
        shown = mine[:: max(1, len(mine) // 16)]
        shown += [mine[-1]] if shown[-1] is not mine[-1] else []
        for r in shown:
            print(f"  {r['pos']:5d} " + "  ".join(f"{r[w][h] / first[w][h]:9.3f}" for w in names for h in range(len(first[w]))))
    overlap = None
    if not model.blocks[0].mixer.opts.self_modifying:
        overlap = key_overlap(model, ids)
        print("mean cosine between two positions' keys k" + (" and features σ(W2_0 k)" if "silu_W2k" in overlap[0] else "")
              + ", per head:")
        for r in overlap:
            print(f"  block {r['block']}: k " + " ".join(f"{c:.3f}" for c in r["k"])
                  + (("   σ(W2_0 k) " + " ".join(f"{c:.3f}" for c in r["silu_W2k"])) if "silu_W2k" in r else ""))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"argv": vars(a), "final_train_loss": losses[-1] if losses else None,
                                           "rows": rows, "key_overlap": overlap}, indent=1))


if __name__ == "__main__":
    main()
