"""How large a trained model's memories grow on a given text: the quantity `model.memory_max_norm` bounds.

    python benchmarks/memory_norms.py runs/bench-models/hope/final --text ../shared/data/pg19-mini/books/1013.txt.gz
    python benchmarks/memory_norms.py runs/bench-models/hope/final --repeat "Mary went to the kitchen. "

Feeds the text (or a sentence repeated) through the model in pieces of the largest memory chunk, so
every piece ends where a chunk of every memory starts, and prints per block and memory (projection
memories `proj`, M_memory `mem`) the largest RMS row norm ‖W‖_F / √rows of each weight over all
heads and chunk starts, as the memory arrives there, before any bound (docs/paper_map.md, "Bounded
memories"). Input-side weights start near 1; the presets bound hope's at 4.
"""
from __future__ import annotations

import argparse
import gzip
from pathlib import Path
from types import SimpleNamespace

import torch

import hopelm
from hopelm.ops.memory import rms_row_norm


def largest_norms(model: torch.nn.Module, ids: torch.Tensor, piece: int) -> dict[str, float]:
    """Largest RMS row norm of every memory weight at chunk starts, feeding ids [1, T] in pieces."""
    largest: dict[str, float] = {}

    def record(states: list) -> None:                 # per block: SMState-like (proj, mem) or None
        for i, s in enumerate(states):
            for mem in ("proj", "mem"):
                m = getattr(s, mem, None)
                for w in ("W", "W1", "W2"):
                    if m is not None and getattr(m, w, None) is not None:
                        key = f"block {i} {mem} {w}"
                        largest[key] = max(largest.get(key, 0.0), rms_row_norm(getattr(m, w)).max().item())

    state = None
    with torch.no_grad():
        # the first chunk starts from the learned initial states M_□,0
        record([SimpleNamespace(proj=getattr(b.mixer, "proj_init", None), mem=getattr(b.mixer, "mem_init", None))
                for b in model.blocks])
        for part in ids.split(piece, dim=1):
            state = model(part, state=state).state
            record(state.layers if hasattr(state, "layers") else state)
    return largest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a .txt or .txt.gz file")
    src.add_argument("--repeat", help="a sentence, repeated to fill --tokens")
    p.add_argument("--offset", type=int, default=20000, help="bytes of --text to skip (past the book's front matter)")
    p.add_argument("--tokens", type=int, default=4096)
    a = p.parse_args()
    torch.set_num_threads(1)
    model, tok = hopelm.load(a.checkpoint)
    if a.text:
        raw = Path(a.text).read_bytes()
        text = (gzip.decompress(raw) if a.text.endswith(".gz") else raw)[a.offset:].decode("utf-8", "replace")
    else:
        text = a.repeat * (a.tokens // max(1, len(a.repeat)) + 1)
    ids = torch.tensor([tok.encode(text)[:a.tokens]])
    cfg = model.run_config.model
    piece = max(cfg.chunk_size, cfg.projection_chunk_size)
    largest = largest_norms(model, ids, piece)
    print(f"{ids.shape[1]} tokens in pieces of {piece}; memory_max_norm of the checkpoint: {cfg.memory_max_norm}")
    for key, v in largest.items():
        print(f"  {key:<20} largest RMS row norm {v:.3f}")


if __name__ == "__main__":
    main()
