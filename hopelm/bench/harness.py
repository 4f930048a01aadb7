"""`hopelm bench`: training throughput, prefill time, decode latency and MFU of every model, in one run.

    hopelm bench                                    # tiny preset, all models, T = 512/2048/8192
    hopelm bench --quick                            # tiny sizes: a smoke run in well under a minute on CPU
    hopelm bench --preset gpu125m --device cuda --models transformer,hope --max-seconds 120

All models at a preset have the same parameter count (models/registry.py), so rows compare like
with like; `vs_transformer` is each figure's speed ratio to the transformer measured in this run.
Every timing is the median of `--repeats` runs after a warm-up. A measurement whose estimated time
exceeds `--max-seconds`, or that runs out of memory, is recorded as skipped with its reason.
Writes bench.json and bench.md (the table printed on stdout) and plots into `--out`.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hopelm.bench import report
from hopelm.bench.measure import (Sweep, count_flops, device_name, git_commit, matmul_peak, median,
                                  memory_kind, peak_memory, reset_peak, state_nbytes, sync, timed)
from hopelm.config import ConfigError, load_config, parse_override
from hopelm.data import get_tokenizer
from hopelm.models import LM, list_models, model_from_config
from hopelm.train.graphs import GraphedStep

# A full run's lengths (EVALUATION.md §6) and `--quick`'s: small enough that all five models finish
# in under a minute on a 2-core CPU, large enough to exercise every code path (CMS blocks, chunks).
# --quick also runs on one thread: its 64-wide matmuls gain nothing from more, and on a shared
# machine a busy core stalls every parallel region of the others (measured: 170 s instead of 20 s).
FULL = dict(lengths="512,2048,8192", prefill="1k,2k,4k,8k,16k,32k,64k", decode="1k,4k,16k,64k",
            repeats=3, decode_steps=16, batch_tokens=8192)
QUICK = dict(lengths="64,128", prefill="128,256,512", decode="64,256", repeats=1, decode_steps=8, batch_tokens=256)
QUICK_MODEL = {"model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny model and lengths (smoke run, < 1 min on CPU)")
    p.add_argument("--models", default="", help="comma-separated registry names (default: all)")
    p.add_argument("--lengths", default=None, help=f"training sequence lengths (default {FULL['lengths']})")
    p.add_argument("--prefill", default=None,
                   help=f"prefill lengths, '1k' = 1024; 'none' skips them (default {FULL['prefill']})")
    p.add_argument("--decode", default=None, help=f"decode context lengths; 'none' skips them (default {FULL['decode']})")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per training step; batch = max(1, this // T) (default 8192)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3)")
    p.add_argument("--decode-steps", type=int, default=None, help="tokens decoded per timed repeat (default 16)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time budget of one measurement")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 with --quick, see QUICK)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cuda-graph", action="store_true",
                   help="time training steps replayed from a CUDA graph (train.cuda_graph); capture is not timed")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/bench, or bench-quick)")


def _lengths(text: str, flag: str) -> list[int]:
    if text.strip().lower() == "none":   # skip this measurement (e.g. --prefill none: training only)
        return []
    try:
        values = [int(x[:-1]) * 1024 if x.endswith("k") else int(x) for x in text.lower().split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}={text!r} must be comma-separated positive integers such as 512,2k,8k.") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"{flag}={text!r} must be comma-separated positive integers such as 512,2k,8k.")
    return sorted(set(values))


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device.")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else name.replace("auto", "cpu"))


def _autocast(device: torch.device):
    # The trainer's precision: bf16 autocast on CUDA, float32 on CPU (DESIGN.md).
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def build(name: str, s: argparse.Namespace, overrides: dict[str, Any], device: torch.device) -> LM:
    cfg = load_config(s.preset, s.config, {**overrides, "model.name": name})
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = get_tokenizer(cfg.data.tokenizer).vocab_size
    torch.manual_seed(0)
    return model_from_config(cfg.model).to(device)


# ---- the three measurements of one model ---------------------------------------------------------
def measure_train(model: LM, T: int, batch: int, device: torch.device, repeats: int, peak_flops: float,
                  cuda_graph: bool = False) -> dict:
    """One full training step: forward with targets, backward, AdamW step. With `cuda_graph` the
    forward and backward are replayed from a graph captured first (train/graphs.py; the capture,
    with its two eager warm-up steps, is timed apart as capture_s)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)   # the rate is irrelevant to the timing
    x = torch.randint(model.cfg.vocab_size, (batch, T + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step():
        with _autocast(device):
            loss = model(inputs, targets).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    graphed, capture_s = None, None
    try:
        flops = count_flops(step)   # one untimed step under the counter (a replay dispatches nothing to count)
        reset_peak(device)
        if cuda_graph:
            start = time.perf_counter()
            graphed = GraphedStep(model, inputs, targets, torch.bfloat16 if device.type == "cuda" else None)
            sync(device)
            capture_s = time.perf_counter() - start

            def step():   # noqa: F811  (the same step, its forward and backward replayed)
                graphed(inputs, targets)
                opt.step()
        seconds = median(timed(step, device, warmup=1, repeats=repeats))
        memory = peak_memory(device)
    finally:   # a step that ran out of memory must not leave its gradients (or a graph) behind
        model.zero_grad(set_to_none=True)
        del graphed
    return {"step_s": seconds, "tokens_per_s": batch * T / seconds, "flops_per_step": flops,
            "achieved_gflops": flops / seconds / 1e9, "mfu": flops / seconds / peak_flops, "peak_memory_bytes": memory,
            "capture_s": capture_s}


def measure_prefill(model: LM, L: int, device: torch.device, repeats: int) -> dict:
    """A no-grad forward over a [1, L] prompt (LM.forward computes the logits of every position)."""
    model.eval()
    idx = torch.randint(model.cfg.vocab_size, (1, L), device=device)

    def forward():
        with torch.no_grad(), _autocast(device):
            model(idx)

    reset_peak(device)
    seconds = median(timed(forward, device, warmup=1, repeats=repeats))
    return {"seconds": seconds, "tokens_per_s": L / seconds, "peak_memory_bytes": peak_memory(device)}


def measure_decode(model: LM, L: int, steps: int, device: torch.device, repeats: int) -> dict:
    """Mean per-token latency of one-token calls continuing the state of an L-token prefix.
    Each repeat restarts from the same prefix state (states are values, never mutated). Models
    with online CMS levels decode at least one whole CMS block per repeat, so the mean carries
    exactly one block's inner update (amortised) rather than a fraction that depends on `steps`."""
    model.eval()
    steps = max(steps, model.cms_block)
    V = model.cfg.vocab_size
    prefix, token = torch.randint(V, (1, L), device=device), torch.randint(V, (1, 1), device=device)
    with torch.no_grad(), _autocast(device):
        state = model(prefix).state

    def decode():
        with torch.no_grad(), _autocast(device):
            s = state
            for _ in range(steps):
                s = model(token, state=s).state

    reset_peak(device)   # the decode phase's memory: weights, state and one step, not the prefix pass
    seconds = median(timed(decode, device, warmup=1, repeats=repeats))
    return {"ms_per_token": seconds / steps * 1e3, "steps": steps, "state_bytes": state_nbytes(state),
            "peak_memory_bytes": peak_memory(device)}


TRAIN_FIELDS = ("step_s", "tokens_per_s", "flops_per_step", "achieved_gflops", "mfu", "peak_memory_bytes", "capture_s")
PREFILL_FIELDS = ("seconds", "tokens_per_s", "peak_memory_bytes")
DECODE_FIELDS = ("ms_per_token", "steps", "state_bytes", "peak_memory_bytes")


def bench_model(name: str, s: argparse.Namespace, overrides: dict[str, Any], device: torch.device,
                peak_flops: float) -> dict:
    model = build(name, s, overrides, device)
    counts = model.param_counts()
    row: dict[str, Any] = {"model": name, "params_total": counts["total"],
                           "params_non_embedding": counts["non_embedding"], "train": [], "prefill": [], "decode": []}

    def log(section: str, key: str, value: int, r: dict, field: str, fmt: str) -> None:
        text = f"skipped: {r['skipped']}" if r["skipped"] else format(r[field], fmt)
        print(f"bench {name:<15} {section:<8} {key}={value:<6} {text}", file=sys.stderr, flush=True)

    sweep = Sweep(s.max_seconds, device, floor=0.0)   # constant tokens per step: the time may not grow
    for T in s.lengths:   # batch keeps tokens per step constant until it reaches 1
        B = max(1, s.batch_tokens // T)
        blank = {"T": T, "batch": B, **dict.fromkeys(TRAIN_FIELDS)}
        r = sweep.run(lambda: measure_train(model, T, B, device, s.repeats, peak_flops, s.cuda_graph), B * T * T, blank)
        row["train"].append(r)
        log("train", "T", T, r, "tokens_per_s", ",.0f")
    sweep = Sweep(s.max_seconds, device, floor=0.5)   # cost L²: at least linear in L
    for L in s.prefill:
        r = sweep.run(lambda: measure_prefill(model, L, device, s.repeats), L * L,
                      {"L": L, **dict.fromkeys(PREFILL_FIELDS)})
        row["prefill"].append(r)
        log("prefill", "L", L, r, "seconds", ".4f")
    sweep = Sweep(s.max_seconds, device, floor=0.5)
    for L in s.decode:
        r = sweep.run(lambda: measure_decode(model, L, s.decode_steps, device, s.repeats), L * L,
                      {"L": L, **dict.fromkeys(DECODE_FIELDS)})
        row["decode"].append(r)
        log("decode", "L", L, r, "ms_per_token", ".3f")
    return row


def add_ratios(rows: list[dict]) -> None:
    """vs_transformer: this model's speed over the transformer's at the same length, in this run
    (tokens/s for training, 1/time for prefill and decode); None where either was not measured."""
    ref = next((r for r in rows if r["model"] == "transformer"), None)
    for section, key, field, higher_is_faster in (("train", "T", "tokens_per_s", True),
                                                  ("prefill", "L", "seconds", False),
                                                  ("decode", "L", "ms_per_token", False)):
        base = {m[key]: m[field] for m in ref[section]} if ref else {}
        for r in rows:
            for m in r[section]:
                b, v = base.get(m[key]), m[field]
                m["vs_transformer"] = None if b is None or v is None else (v / b if higher_is_faster else b / v)


def settings(args: argparse.Namespace, overrides: list[str]) -> tuple[argparse.Namespace, list[str], dict]:
    """Flags over the full or quick defaults, checked: (settings, model names, config overrides)."""
    defaults = QUICK if args.quick else FULL
    s = argparse.Namespace(preset=args.preset, config=args.config, max_seconds=args.max_seconds,
                           cuda_graph=args.cuda_graph,
                           **{k: v if getattr(args, k) is None else getattr(args, k) for k, v in defaults.items()})
    s.lengths, s.prefill, s.decode = (_lengths(s.lengths, "--lengths"), _lengths(s.prefill, "--prefill"),
                                      _lengths(s.decode, "--decode"))
    if min(s.repeats, s.decode_steps, s.batch_tokens) < 1 or s.max_seconds <= 0 or args.threads < 0:
        raise ConfigError("--repeats, --decode-steps, --batch-tokens and --max-seconds must be > 0 and --threads >= 0.")
    known = list_models()
    names = [n.strip() for n in args.models.split(",") if n.strip()] or \
        ["transformer"] + [n for n in known if n != "transformer"]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"Unknown model {unknown[0]!r} in --models (known: {', '.join(known)}).")
    model_overrides = {**(QUICK_MODEL if args.quick else {}), **dict(parse_override(o) for o in overrides)}
    for name in names:   # a bad override or preset fails now, before any measurement runs
        load_config(s.preset, s.config, {**model_overrides, "model.name": name})
    return s, names, model_overrides


def run_bench(args: argparse.Namespace, overrides: list[str]) -> dict:
    """Measure every requested model; write JSON, Markdown and plots; print the table; return the result."""
    s, names, model_overrides = settings(args, overrides)
    threads = args.threads or (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    device = _device(args.device)
    if args.cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph needs a CUDA device; this run is on {device.type}.")
    torch.manual_seed(0)

    on_gpu = device.type == "cuda"
    peak = matmul_peak(device, 8192 if on_gpu else (512 if args.quick else 2048),
                       torch.bfloat16 if on_gpu else torch.float32)
    print(f"bench matmul peak: {peak['gflops']:,.1f} GFLOP/s ({peak['n']}^3 {peak['dtype']})", file=sys.stderr)
    rows = []
    for name in names:
        rows.append(bench_model(name, s, model_overrides, device, peak["gflops"] * 1e9))
        gc.collect()   # free this model (and its optimizer state) before the next one is built
        if on_gpu:
            torch.cuda.empty_cache()
    add_ratios(rows)

    meta = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "git_commit": git_commit(), "preset": args.config or args.preset, "quick": args.quick,
            "precision": "bf16 autocast" if on_gpu else "float32", "memory": memory_kind(device),
            "args": vars(s), "overrides": model_overrides}
    result = {"meta": meta, "matmul_peak": peak, "models": rows}
    out = Path(args.out or ("benchmarks/results/bench-quick" if args.quick else "benchmarks/results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    table = report.markdown(result)
    (out / "bench.md").write_text(table)
    plots = report.plot(result, out)
    print(table)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'} and {len(plots)} plots", file=sys.stderr)
    return result
