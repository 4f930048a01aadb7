"""A floor under a training step's time from its matrix products alone, next to the measured step.

    python benchmarks/matmul_bound.py --threads 1 transformer "hope --model.cms_lrs=[0.0,0.0,0.0]" hope

Records every matrix product, triangular solve and fused attention call that one training step
(forward and backward, no optimizer) dispatches, with its operands' shapes and strides; then times
each distinct call alone, on operands of the same layout that stay in cache between repeats, and
sums time × count. That sum is what the step would take if everything else (elementwise work,
copies, reductions, Python) were free and every product ran as fast as torch's own kernel runs it
alone: no fusion of the same products beats it, only doing fewer or larger products does.

Why it exists: issue #4 asks hope to train at ≥ 0.5× the transformer's tokens/s. If hope's floor
is above twice the transformer's measured step, no kernel fusion on this device gets there.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from hope_configs import add_step_args, build     # the benchmarks folder is on sys.path when run as a script

aten = torch.ops.aten
PRODUCTS = {aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default}
TIMED = PRODUCTS | {aten.linalg_solve_triangular.default, aten.triangular_solve.default,
                    aten._scaled_dot_product_flash_attention_for_cpu.default,
                    aten._scaled_dot_product_flash_attention_for_cpu_backward.default}


def _layout(a):
    """Hashable description of an argument: tensors by shape, stride and dtype, the rest by value."""
    if isinstance(a, torch.Tensor):
        return ("T", tuple(a.shape), tuple(a.stride()), str(a.dtype))
    if isinstance(a, (list, tuple)):
        return tuple(_layout(x) for x in a)
    return a


class Recorder(TorchDispatchMode):
    """Counts the timed ops a piece of code dispatches, by op and operand layout, and the seconds
    they take where they run (inside the step, operands fresh from the ops before them)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()
        self.in_step_s = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in TIMED:
            return func(*args, **kwargs)
        self.calls[(func, _layout(args), tuple(sorted((k, _layout(v)) for k, v in kwargs.items())))] += 1
        start = time.perf_counter()
        out = func(*args, **kwargs)
        self.in_step_s += time.perf_counter() - start
        return out


def _rebuild(a, triangular: bool):
    """A fresh operand of the recorded layout; triangular systems get a unit diagonal (well posed)."""
    if isinstance(a, tuple) and a and a[0] == "T":
        _, shape, stride, dtype = a
        dt = getattr(torch, dtype.removeprefix("torch."))
        if 0 in stride:            # an expanded operand (a batch of one shared state): fill its storage
            size = 1 + sum((n - 1) * s for n, s in zip(shape, stride))
            return (torch.randn(size) * 0.1).to(dt).as_strided(shape, stride)
        t = torch.empty_strided(shape, stride, dtype=dt)
        t.copy_(torch.randn(shape) * 0.1)
        if triangular and len(shape) >= 2 and shape[-1] == shape[-2]:
            t.diagonal(dim1=-2, dim2=-1).add_(1.0)
        return t
    if isinstance(a, tuple):
        return tuple(_rebuild(x, triangular) for x in a)
    return a


def flops(func, args) -> int:
    """FLOPs of a recorded call: 2·m·k·n per product (times the batch), n·m² per triangular solve
    with an m×m matrix and n right-hand sides, and torch's count for the fused attention."""
    shape = lambda a: a[1]
    if func in (aten.addmm.default, aten.baddbmm.default):
        args = args[1:]
    if func in PRODUCTS:
        a, b = shape(args[0]), shape(args[1])
        return 2 * (a[0] if len(a) == 3 else 1) * a[-2] * a[-1] * b[-1]
    if func in (aten.linalg_solve_triangular.default, aten.triangular_solve.default):
        A, Bm = (args[0], args[1]) if func == aten.linalg_solve_triangular.default else (args[1], args[0])
        m, n = shape(A)[-1], shape(Bm)[-1]
        return math.prod(shape(Bm)[:-2]) * n * m * m
    if func == aten._scaled_dot_product_flash_attention_for_cpu.default:
        return sdpa_flop_count(*(shape(a) for a in args[:3]))
    return sdpa_backward_flop_count(*(shape(a) for a in args[:4]))


def time_alone(func, args, kwargs, min_s: float = 0.005, rounds: int = 3) -> float:
    """Seconds per call of `func` on fresh operands of the recorded layout: calls repeat until
    `min_s` has passed, the fastest of `rounds` rounds is kept."""
    tri = func in (aten.linalg_solve_triangular.default, aten.triangular_solve.default)
    a, kw = [_rebuild(x, tri) for x in args], {k: _rebuild(v, tri) for k, v in kwargs}
    func(*a, **kw)
    best = float("inf")
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_s or n == 0:
            func(*a, **kw)
            n += 1
        best = min(best, elapsed / n)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", default=["transformer", "hope --model.cms_lrs=[0.0,0.0,0.0]", "hope"])
    add_step_args(p)
    p.add_argument("--out", default="benchmarks/results/matmul_bound.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randint(0, 256, (args.batch, args.seq_len + 1))
    rows = []
    for spec in args.configs:
        name, *over = spec.split()
        model = build(name, args.preset, over)

        def step():
            model(x[:, :-1], x[:, 1:]).loss.backward()
            model.zero_grad(set_to_none=True)

        step()                                                    # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        rec = Recorder()
        with rec:
            step()
        floor, total_flops, calls = 0.0, 0, 0
        for (func, a, kw), count in rec.calls.items():
            floor += count * time_alone(func, a, kw)
            total_flops += count * flops(func, a)
            calls += count
        rows.append(dict(config=spec, step_s=min(times), in_step_s=rec.in_step_s, floor_s=floor,
                         gflop=total_flops / 1e9, timed_calls=calls, distinct_calls=len(rec.calls)))
        print(f"{spec}: step {min(times) * 1e3:,.0f} ms, products in the step {rec.in_step_s * 1e3:,.0f} ms, "
              f"alone {floor * 1e3:,.0f} ms ({calls:,} calls, {len(rec.calls)} distinct)", flush=True)
    base = rows[0]["step_s"]
    print(f"\n| configuration (T={args.seq_len}, batch {args.batch}, forward+backward) | step ms | "
          f"products in the step ms | everything else ms | products alone (floor) ms | "
          f"GFLOP | GFLOP/s in the step / alone | floor / first's step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['config']}` | {r['step_s'] * 1e3:,.0f} | {r['in_step_s'] * 1e3:,.0f} | "
              f"{(r['step_s'] - r['in_step_s']) * 1e3:,.0f} | {r['floor_s'] * 1e3:,.0f} | {r['gflop']:.1f} | "
              f"{r['gflop'] / r['in_step_s']:.1f} / {r['gflop'] / r['floor_s']:.1f} | "
              f"{r['floor_s'] / base:.2f}x |")
    meta = dict(device=f"CPU, {torch.get_num_threads()} threads", torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                preset=args.preset, seq_len=args.seq_len, batch=args.batch, repeats=args.repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
