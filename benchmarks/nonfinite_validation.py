"""Which validation window makes a checkpoint's validation loss non-finite, and where it starts.

    python benchmarks/nonfinite_validation.py runs/bench-models/hope/final

Rebuilds the trainer's validation batches from the checkpoint's own config (the same windows
`hopelm train` scores), runs them without autograd and stops at the first batch whose loss is not
finite. For that batch it prints the first row and position where a block's mixer output is not
finite, and for a hope mixer (self-generated values) the largest norm of the values v that block
generates in each projection chunk of that row: the trace that found the unbounded reads of the
projection memories (docs/paper_map.md, "Bounded memories").
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

import hopelm
from hopelm.data.loader import eval_windows, load_tokens
from hopelm.ops import chunk_conv


def mixer_inputs(model: torch.nn.Module, idx: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per block, the mixer's input and output over the whole of idx [B, T] (online CMS levels call
    a mixer once per block of tokens; the pieces are joined)."""
    ins, outs = [[] for _ in model.blocks], [[] for _ in model.blocks]

    def keep(i: int):
        def hook(module, args, out) -> None:      # returns None: a hook's return value replaces the output
            ins[i].append(args[0])
            outs[i].append(out[0])
        return hook

    hooks = [b.mixer.register_forward_hook(keep(i)) for i, b in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            model(idx)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(t, 1) for t in ins], [torch.cat(t, 1) for t in outs]


def value_norms(mixer: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """The largest ‖v_t‖ over heads and tokens of each projection chunk, for x [1, T, D] fed from a
    fresh state (the validation windows start one), before normalize_v."""
    P = mixer.opts.projection_chunk_size
    with torch.no_grad():
        xc, _ = chunk_conv(mixer.w_in(x), mixer.conv, None)
        opts = mixer.opts
        normalize, opts.normalize_v = opts.normalize_v, False       # look at v as generated
        try:
            _, v, *_ = mixer._self_generated(mixer._heads(F.silu(xc)), mixer.proj_init.state(1))
        finally:
            opts.normalize_v = normalize
    return [float(c.norm(dim=-1).max()) for c in v.split(P, dim=1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    a = p.parse_args()
    torch.set_num_threads(1)
    model, tok = hopelm.load(a.checkpoint)
    model.eval()
    cfg = model.run_config
    windows = eval_windows(load_tokens(cfg.data, tok, "validation"), cfg.data.seq_len, cfg.train.batch_size,
                           cfg.train.eval_batches)
    for b, (x, y) in enumerate(windows):
        with torch.no_grad():
            loss = model(x, y).loss.item()
        print(f"validation batch {b}: loss {loss:.4f}")
        if math.isfinite(loss):
            continue
        ins, outs = mixer_inputs(model, x)
        for i, o in enumerate(outs):
            bad = ~torch.isfinite(o).all(-1)                                 # [B, T]
            if bad.any():
                row = int(bad.any(-1).nonzero()[0])
                print(f"  first non-finite mixer output: block {i}, row {row}, position {int(bad[row].nonzero()[0])}")
                mixer = model.blocks[i].mixer
                if getattr(mixer, "proj_init", None) is not None:
                    norms = value_norms(mixer, ins[i][row:row + 1])
                    P = mixer.opts.projection_chunk_size
                    print(f"  largest ‖v‖ per projection chunk of {P} tokens in that row: "
                          + ", ".join(f"{n:.3g}" for n in norms))
                break
        return
    print("every validation batch has a finite loss")


if __name__ == "__main__":
    main()
