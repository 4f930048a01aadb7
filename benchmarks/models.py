"""Train every registry model on the same tokens and report validation loss and training tokens/s.

    python benchmarks/models.py --data.path=../shared/data/pg19-mini --steps 100

Each model uses the preset (parameter parity is automatic, see models/registry.py) with the same
data, seed, batch, schedule and optimizer; the tokens/s ratio to `transformer` is measured in this
one run. Prints a Markdown table and writes JSON (default benchmarks/results/models.json).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from hopelm.models import list_models
from hopelm.train import trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="transformer,hope,hope_attention,titans,gated_deltanet")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="benchmarks/results/models.json")
    p.add_argument("--run-dir", default="runs/bench-models")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args, overrides = p.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.models.split(",") if n in list_models()]
    rows = []
    for name in names:
        cfg, tok, _ = trainer.prepare_run(args.preset, None, overrides + [
            f"--model.name={name}", f"--train.max_steps={args.steps}", "--train.eval_interval=0",
            "--train.progress=false", "--train.tensorboard=false", f"--train.out_dir={args.run_dir}/{name}",
            f"--train.log_interval={max(1, args.steps // 10)}"])
        start = time.perf_counter()
        summary = trainer.train(cfg, tok)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(args.run_dir) / name / "metrics.jsonl").read_text().splitlines()]
        speeds = [r["tokens_per_s"] for r in records if r["kind"] == "train"][-10:]
        # The first log interval includes warm-up (allocations, caches); the median of the rest is the rate.
        rate = sorted(speeds[1:] or speeds)[len(speeds[1:] or speeds) // 2]
        from hopelm.models import model_from_config
        params = model_from_config(cfg.model).param_counts()["non_embedding"]
        rows.append({"model": name, "non_embedding_params": params, "tokens": args.steps * cfg.train.batch_size * cfg.data.seq_len,
                     "val_loss": summary["metrics"]["val_loss"], "val_bpb": summary["metrics"]["val_bpb"],
                     "train_tokens_per_s": rate, "wall_s": wall})
    ref = next((r["train_tokens_per_s"] for r in rows if r["model"] == "transformer"), None)
    print("| model | non-emb. params | tokens | val loss | val bits/byte | train tokens/s | vs transformer |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["speed_ratio"] = r["train_tokens_per_s"] / ref if ref else None
        ratio = f"{r['speed_ratio']:.2f}x" if ref else "-"
        print(f"| {r['model']} | {r['non_embedding_params']:,} | {r['tokens']:,} | {r['val_loss']:.4f} | "
              f"{r['val_bpb']:.4f} | {r['train_tokens_per_s']:,.0f} | {ratio} |")
    meta = {"device": f"{platform.machine()} CPU, {torch.get_num_threads()} threads" if not torch.cuda.is_available()
            else torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "preset": args.preset, "steps": args.steps, "overrides": overrides}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
