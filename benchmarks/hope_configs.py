"""Training-step time of hope settings next to the transformer, interleaved in one process.

    python benchmarks/hope_configs.py --seq-len 1024 --batch 4 --repeats 3

Each configuration is a model name plus dotted overrides of the preset. Steps (forward, backward,
AdamW) of all configurations alternate, and the fastest of `repeats` steps is kept (the median is
printed beside it), so a load change on a shared machine hits every row alike; the ratio is to the
first configuration. This is how the presets' CMS periods and chunk sizes were chosen
(docs/paper_map.md, docs/results.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hopelm.config import load_config
from hopelm.models import model_from_config

DEFAULT = [
    "transformer",
    "hope --model.cms_lrs=[0.0,0.0,0.0]",                       # CMS static: the mixer's cost alone
    "hope --model.cms_periods=[64,128,0]",
    "hope --model.cms_periods=[128,512,0]",
    "hope --model.cms_periods=[256,512,0]",
    "hope --model.cms_periods=[128,512,0] --model.chunk_size=64",
    "hope --model.cms_periods=[128,512,0] --model.projection_chunk_size=128",
]


def add_step_args(p: argparse.ArgumentParser) -> None:
    """The options this script shares with hope_breakdown.py: preset, step shape, repeats, threads."""
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)


def build(name: str, preset: str, over: list[str]):
    """A byte-level model of `preset` with dotted overrides, seeded so every script builds the same one."""
    cfg = load_config(preset, None, [f"--model.name={name}", "--model.vocab_size=256", *over])
    torch.manual_seed(0)
    return model_from_config(cfg.model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", default=DEFAULT, help='e.g. "hope --model.chunk_size=64"')
    add_step_args(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model; the compile time (in the warm-up round) is printed, not timed")
    p.add_argument("--compile-mixers", action="store_true",
                   help="torch.compile only every block's sequence mixer (attention or memory), in every model: "
                        "the CMS block loop and its inner gradients stay eager")
    p.add_argument("--bf16", action="store_true",
                   help="every step under CPU bf16 autocast (the trainer's --train.dtype=bfloat16); "
                        "the memory mixers keep their recurrence in float32")
    p.add_argument("--out", default="benchmarks/results/hope_configs.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for spec in args.configs:
        name, *over = spec.split()
        model = build(name, args.preset, over)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if args.compile_mixers:
            for block in model.blocks:
                block.mixer.compile()
        runs.append(dict(config=spec, model=torch.compile(model) if args.compile else model, opt=opt, times=[]))
    x = torch.randint(0, 256, (args.batch, args.seq_len + 1))
    for r in range(args.repeats + 1):             # round 0 warms up (allocations, caches)
        for run in runs:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = run["model"](x[:, :-1], x[:, 1:]).loss
            loss.backward()
            run["opt"].step()
            run["opt"].zero_grad()
            if r:
                run["times"].append(time.perf_counter() - start)
            elif args.compile or args.compile_mixers:
                print(f"{run['config']}: first step (compiles) {time.perf_counter() - start:,.0f} s", flush=True)
    base, base_med = min(runs[0]["times"]), statistics.median(runs[0]["times"])
    # The fastest step is the figure (least disturbed by the machine); the median says how steady it was.
    rows = [dict(config=r["config"], step_s=min(r["times"]), tokens_per_s=args.batch * args.seq_len / min(r["times"]),
                 ratio=base / min(r["times"]), median_step_s=statistics.median(r["times"]),
                 median_ratio=base_med / statistics.median(r["times"]), all_step_s=r["times"]) for r in runs]
    print(f"| configuration (T={args.seq_len}, batch {args.batch}) | ms/step | tokens/s | vs first | median ms/step | vs first (medians) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['config']}` | {r['step_s'] * 1e3:,.0f} | {r['tokens_per_s']:,.0f} | {r['ratio']:.3f}x "
              f"| {r['median_step_s'] * 1e3:,.0f} | {r['median_ratio']:.3f}x |")
    meta = dict(device=f"CPU, {torch.get_num_threads()} threads", torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                preset=args.preset, seq_len=args.seq_len, batch=args.batch, repeats=args.repeats,
                compile=args.compile, compile_mixers=args.compile_mixers, bf16_autocast=args.bf16)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
