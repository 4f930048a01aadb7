"""Chunked vs naive timings of the associative-memory kernels (issue 3; not a test).

    python benchmarks/ops.py [--out benchmarks/results/ops.json] [--naive-max-T 2048]

For T in {512, 2048, 8192}, B=2, H=4, d_h=64 (mlp memory d_m=64), float32 on the current device:
forward (torch.no_grad) and forward+backward times of chunk_* and naive_*, and their ratio, all
measured in one run. Also times the momentum + preconditioner combination against momentum-free
chunk time at C=16 (the SPEC §2 decision).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from hopelm.ops import MemoryState, chunk_decay, chunk_delta, chunk_memory, naive_decay, naive_delta, naive_memory

B, H, D, DM = 2, 4, 64, 64


def inputs(T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    q = F.normalize(r(B, T, H, D), dim=-1)
    k = F.normalize(r(B, T, H, D), dim=-1)
    v = r(B, T, H, D)
    eta = torch.sigmoid(r(B, T, H)) * 0.2
    alpha = 0.99 + 0.01 * torch.sigmoid(r(B, T, H))
    return q, k, v, eta, alpha


CLOCK = time.perf_counter


def timeit(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
    return best


def measure(run, T: int, repeats: int) -> tuple[float, float]:
    """run(tensors) -> output tensor. Returns (fwd seconds, fwd+bwd seconds)."""
    ts = inputs(T)

    def fwd():
        with torch.no_grad():
            run(ts)

    def fwd_bwd():
        leaves = [t.clone().requires_grad_() for t in ts]
        run(leaves).square().mean().backward()

    fwd()  # warm-up
    return timeit(fwd, repeats), timeit(fwd_bwd, repeats)


def delta_op(form, C):
    def run(ts):
        q, k, v, eta, alpha = ts
        kw = {} if form is naive_delta else {"chunk_size": C}
        return form(q, k, v, eta, alpha, **kw)[0]
    return run


def decay_op(form, C):
    def run(ts):
        q, k, v, eta, alpha = ts
        kw = {} if form is naive_decay else {"chunk_size": C}
        return form(q, k, v, eta, alpha, **kw)[0]
    return run


def memory_op(form, C, **opts):
    g = torch.Generator().manual_seed(1)
    W1 = torch.randn(B, H, D, DM, generator=g) * D ** -0.5
    W2 = torch.randn(B, H, DM, D, generator=g) * D ** -0.5

    def run(ts):
        q, k, v, eta, alpha = ts
        return form(q, k, v, eta, alpha, MemoryState(W1=W1, W2=W2), chunk_size=C, **opts)[0]
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/ops.json")
    ap.add_argument("--naive-max-T", type=int, default=2048)
    ap.add_argument("--T", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (time.process_time); with --threads 1 it equals the "
                         "wall time of an idle machine and is not inflated by other jobs on a shared one")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    # The outer gradient through thousands of contracting in-context steps decays into float32's
    # denormal range, where x86 arithmetic is ~100x slower (T=8192 fwd+bwd of the mlp memory took
    # 1.7x longer for it); GPUs flush denormals anyway.
    flush = torch.set_flush_denormal(True)

    ops = [  # (name, chunk run factory, naive run factory, chunk size)
        ("delta rule", lambda C: delta_op(chunk_delta, C), lambda C: delta_op(naive_delta, C), 32),
        ("decayed lin. attn", lambda C: decay_op(chunk_decay, C), lambda C: decay_op(naive_decay, C), 32),
        ("mlp memory", lambda C: memory_op(chunk_memory, C), lambda C: memory_op(naive_memory, C), 16),
        ("mlp memory +mom", lambda C: memory_op(chunk_memory, C, momentum=0.9),
         lambda C: memory_op(naive_memory, C, momentum=0.9), 16),
    ]
    rows = []
    hdr = f"{'op':<18} {'C':>3} {'T':>5} | {'chunk fwd':>9} {'naive fwd':>9} {'ratio':>6} | {'chunk f+b':>9} {'naive f+b':>9} {'ratio':>6}"
    print(hdr)
    print("-" * len(hdr))
    for name, chunk_f, naive_f, C in ops:
        for T in args.T:
            cf, cb = measure(chunk_f(C), T, args.repeats)
            nf = nb = None
            if T <= args.naive_max_T:
                nf, nb = measure(naive_f(C), T, 1)
            row = dict(op=name, chunk_size=C, T=T, chunk_fwd_s=cf, chunk_fwd_bwd_s=cb, naive_fwd_s=nf,
                       naive_fwd_bwd_s=nb, ratio_fwd=nf / cf if nf else None, ratio_fwd_bwd=nb / cb if nb else None)
            rows.append(row)
            fmt = lambda x, u="s": "-" if x is None else (f"{x:.1f}x" if u == "x" else f"{x * 1e3:.0f}ms")
            print(f"{name:<18} {C:>3} {T:>5} | {fmt(cf):>9} {fmt(nf):>9} {fmt(row['ratio_fwd'], 'x'):>6} | "
                  f"{fmt(cb):>9} {fmt(nb):>9} {fmt(row['ratio_fwd_bwd'], 'x'):>6}", flush=True)
    # chunk time linear in T: 8192 vs 2048
    linear = {}
    for name, *_ in ops:
        t = {r["T"]: r["chunk_fwd_bwd_s"] for r in rows if r["op"] == name}
        if 2048 in t and 8192 in t:
            linear[name] = t[8192] / t[2048]
            print(f"linearity {name}: fwd+bwd T=8192 / T=2048 = {linear[name]:.2f} (goal <= 4.5)")
    # SPEC §2 decision: momentum with the preconditioner vs momentum-free, C = 16, T = 2048.
    # Measured interleaved (min over alternating runs) so that load on a shared machine hits both.
    decision = None
    if 2048 in args.T:
        ts = inputs(2048)
        runs = {m: memory_op(chunk_memory, 16, momentum=m) for m in (0.0, 0.9)}

        def fb(run):
            leaves = [t.clone().requires_grad_() for t in ts]
            run(leaves).square().mean().backward()

        best = {m: float("inf") for m in runs}
        for _ in range(max(args.repeats, 5)):
            for m, run in runs.items():
                best[m] = min(best[m], timeit(lambda: fb(run), 1))
        decision = best[0.9] / best[0.0]
        print(f"momentum+preconditioner / momentum-free, mlp memory chunk fwd+bwd (C=16, T=2048, interleaved): "
              f"{best[0.9] * 1e3:.0f}ms / {best[0.0] * 1e3:.0f}ms = {decision:.2f}x (limit 2x)")
    meta = dict(device=f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
                if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                torch=torch.__version__, dtype="float32", B=B, H=H, d_h=D, d_m=DM,
                date=datetime.date.today().isoformat(), fwd="torch.no_grad()", repeats=args.repeats,
                clock=args.clock, threads=torch.get_num_threads(), flush_denormal=flush)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows, linearity_8192_over_2048=linear,
                       momentum_precondition_over_base=decision), f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
