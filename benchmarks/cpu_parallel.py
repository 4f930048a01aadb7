"""How to spend a multi-core CPU on training: intra-op threads in one process, or data-parallel
processes (`torchrun`, DDP over gloo) with one thread each.

    python benchmarks/cpu_parallel.py --procs 2 transformer hope

Every row is the real `hopelm train` (its sampler, AdamW, clipping; evaluation only at the end) run
as a subprocess for 2 × `--log-interval` steps on the vendored corpus; its tokens/s is the second
logged interval (the first holds the warm-up). Three ways per model: 1 thread, `--procs` threads,
and `--procs` processes of 1 thread each over the same global batch (each rank takes its slice,
README "Data"). A hope step is a long chain of small operations that threads cannot split well,
while whole sequences are independent (per-sequence fast weights), so processes should scale it
better; the transformer's large products use threads well.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def tokens_per_s(model: str, mode: str, procs: int, args, extra: list[str]) -> float:
    """tokens/s of the second logged interval of a short `hopelm train` run."""
    with tempfile.TemporaryDirectory() as out:
        steps = 2 * args.log_interval
        train = ["train", f"--model.name={model}", f"--train.max_steps={steps}",
                 f"--train.log_interval={args.log_interval}", "--train.eval_interval=0",
                 "--train.eval_batches=1", "--train.progress=false", f"--train.out_dir={out}", *extra]
        threads = procs if mode == "threads" else 1
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if mode == "processes":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                   "-m", "hopelm", *train]
        else:
            cmd = [sys.executable, "-m", "hopelm", *train]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        return float([r for r in rows if r["kind"] == "train"][1]["tokens_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=["transformer", "hope"])
    p.add_argument("--procs", type=int, default=2, help="threads, or processes of one thread each")
    p.add_argument("--log-interval", type=int, default=5, help="steps per timed interval (2 intervals are run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted overrides for every run, e.g. --set data.seq_len=1024 --set train.batch_size=4")
    p.add_argument("--out", default="benchmarks/results/cpu_parallel.json")
    args = p.parse_args()
    extra = [f"--{s}" for s in args.set]
    modes = [("1 thread", "threads", 1), (f"{args.procs} threads", "threads", args.procs),
             (f"{args.procs} processes x 1 thread", "processes", args.procs)]
    rows = []
    for model in args.models:
        for label, mode, n in modes:
            rows.append(dict(model=model, way=label, tokens_per_s=tokens_per_s(model, mode, n, args, extra)))
            print(f"{model:>14} {label:>24}: {rows[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    one = {r["model"]: r["tokens_per_s"] for r in rows if r["way"] == "1 thread"}
    ref = {r["way"]: r["tokens_per_s"] for r in rows if r["model"] == args.models[0]}
    print(f"\n| model | way | tokens/s | vs 1 thread | vs {args.models[0]} the same way |\n|---|---|---|---|---|")
    for r in rows:
        r["vs_one_thread"] = r["tokens_per_s"] / one[r["model"]]
        r["vs_first_model"] = r["tokens_per_s"] / ref[r["way"]]
        print(f"| `{r['model']}` | {r['way']} | {r['tokens_per_s']:,.0f} | {r['vs_one_thread']:.2f}x | {r['vs_first_model']:.3f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(procs=args.procs, overrides=args.set, rows=rows), indent=1))


if __name__ == "__main__":
    main()
