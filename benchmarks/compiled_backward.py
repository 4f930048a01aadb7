"""Does a torch.compile'd module's backward skip the weight gradients nobody asked for?

    python benchmarks/compiled_backward.py --threads 1

HOPE's online CMS takes, after every block, the gradient of the block's loss with respect to the
CMS fast weights only (SPEC §5); the mixers' own weights are not asked for. Eager autograd then
skips the mixers' weight-gradient products. This times forward + `autograd.grad` of a stack of
linear layers with respect to the input only and with respect to the input and every weight,
eager and compiled: if the compiled module's two times are equal, its backward computes every
gradient whatever is asked, which is why `--train.compile_mixers` helps the static-CMS model more
than hope (docs/results.md).
"""
from __future__ import annotations

import argparse

import torch

from hope_breakdown import best_ms      # the benchmarks folder is on sys.path when run as a script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = torch.nn.Sequential(*(torch.nn.Linear(args.width, args.width, bias=False) for _ in range(args.layers)))
    x = torch.randn(args.tokens, args.width, requires_grad=True)
    print("| module | forward + grad w.r.t. the input ms | forward + grad w.r.t. input and weights ms | saved |")
    print("|---|---|---|---|")
    for name, m in (("eager", net), ("compiled", torch.compile(net))):
        only_x = best_ms(lambda: torch.autograd.grad(m(x).square().sum(), [x]), args.repeats)
        every = best_ms(lambda: torch.autograd.grad(m(x).square().sum(), [x, *net.parameters()]), args.repeats)
        print(f"| {name} | {only_x:,.0f} | {every:,.0f} | {1 - only_x / every:.0%} |")


if __name__ == "__main__":
    main()
