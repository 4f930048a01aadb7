"""Where a hope training step spends its time, next to the transformer's, component by component.

    python benchmarks/hope_breakdown.py --seq-len 1024 --batch 4 --threads 1

Times the forward without autograd (evaluation, prefill), the forward with autograd and forward +
backward of one block's parts on a random [batch, T, d_model] input (the fastest of `repeats`): the transformer's attention and MLP, and hope's mixer split into its
projection memories (input projection, conv, M_k/M_v/M_η/M_α read and written every
projection_chunk_size tokens) and M_memory (written and read every chunk_size tokens), and hope's
CMS with its levels static. The last rows are whole training steps without the optimizer. With
online CMS levels every forward, with or without autograd, includes the inner gradient of every
block (SPEC §5), so the online CMS's extra cost shows as the difference between hope and hope
with static CMS. A kernel that replaces one of these parts (a fused CPU or Triton kernel) can be judged by the
share of the step it would remove; `--compile` adds the two hope mixer parts under torch.compile
(inductor fuses their elementwise work), a first look at what fusion gains there.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hope_configs import add_step_args, build     # the benchmarks folder is on sys.path when run as a script
from hopelm.ops import chunk_conv, chunk_memory


def best_ms(fn, repeats: int) -> float:
    fn()                                            # warm-up (allocations, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_args(p)
    p.add_argument("--compile", action="store_true",
                   help="also time hope's projection memories and M_memory under torch.compile (forward+backward "
                        "only; the first call, which compiles, is timed separately and printed)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, T = args.batch, args.seq_len
    tf = build("transformer", args.preset, [])
    hope = build("hope", args.preset, [])
    static = build("hope", args.preset, ["--model.cms_lrs=[" + ",".join("0.0" for _ in hope.cfg.cms_lrs) + "]"])
    D = tf.cfg.d_model
    x = torch.randn(B, T, D, requires_grad=True)
    sm = hope.blocks[0].mixer

    def projections():                              # SelfModifyingMemory.forward up to k, v, η, α
        xc, _ = chunk_conv(sm.w_in(x), sm.conv, None)
        k, v, eta, alpha, _, proj = sm._self_generated(sm._heads(F.silu(xc)), sm.proj_init.state(B))
        return k, v, eta, alpha, proj

    k, v, eta, alpha = (t.detach().requires_grad_() for t in projections()[:4])
    q = F.normalize(torch.randn(B, T, sm.H, sm.d_h), dim=-1).requires_grad_()

    def memory():
        return chunk_memory(q, k, v, eta, alpha, sm.mem_init.state(B), **sm.memory_kwargs(True, sm.opts.chunk_size))

    def total(out) -> torch.Tensor:                 # a scalar that reaches every output and final state
        ts = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        st = [s for s in (out if isinstance(out, (tuple, list)) else []) if hasattr(s, "W1")]
        return sum(t.sum() for t in ts) + sum(s.W1.sum() + s.W2.sum() for s in st)

    idx = torch.randint(0, 256, (B, T + 1))
    parts = {
        "transformer: attention mixer": lambda: tf.blocks[0].mixer(tf.blocks[0].norm1(x))[0],
        "transformer: MLP": lambda: tf.blocks[0].ffn(x),
        "hope: projection memories (w_in, conv, M_k/M_v/M_η/M_α)": projections,
        "hope: M_memory": memory,
        "hope: CMS (static levels)": lambda: static.blocks[0].ffn(x),
    }
    steps = {"transformer": tf, "hope (CMS static)": static, "hope": hope}
    for name, model in steps.items():
        parts[f"step: {name}"] = lambda model=model: model(idx[:, :-1], idx[:, 1:]).loss
    print(f"| part (one block; steps: whole model), T={T}, batch {B}, {torch.get_num_threads()} thread(s) "
          f"| forward without autograd ms | forward ms | forward+backward ms |")
    print("|---|---|---|---|")
    for name, fn in parts.items():
        def fb(fn=fn):
            total(fn()).backward()
            for m in steps.values():
                m.zero_grad(set_to_none=True)
        with torch.no_grad():
            nograd = best_ms(fn, args.repeats)
        print(f"| {name} | {nograd:,.0f} | {best_ms(fn, args.repeats):,.0f} | {best_ms(fb, args.repeats):,.0f} |",
              flush=True)
    if not args.compile:
        return
    # How much fusing the memories' elementwise work could gain: inductor compiles each part whole
    # (its chunk loop unrolled), so only the forward+backward of a fixed shape is timed.
    for name, fn in [("hope: projection memories", projections), ("hope: M_memory", memory)]:
        compiled = torch.compile(lambda fn=fn: total(fn()))
        fb = lambda: compiled().backward()
        start = time.perf_counter()
        fb()
        first = time.perf_counter() - start
        print(f"| {name}, torch.compile (first call {first:,.0f} s) | | | {best_ms(fb, args.repeats):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
