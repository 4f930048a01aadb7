"""AdamW vs Muon vs M3 (and any other --optims) on the same token budget, in one run (issue 5; not a test).

    python benchmarks/optimizers.py --data.path=/work/shared/data/pg19-mini --steps 200 \
        [--models transformer,hope] [--optims adamw,muon,m3] [--out benchmarks/results/optimizers.json] \
        [--threads N] [any dotted config override, e.g. --model.d_model=128 --optim.lr=3e-3]

Every (model, optimizer) pair starts from the `tiny` preset plus the overrides, the same seed (so the
same initial weights and the same batches), and trains `--steps` steps of the same batch size and
sequence length: the same number of tokens. Reported: validation loss and bits/byte on the same
held-out windows, and training throughput (tokens/s over all steps, evaluation excluded).
Models not in the registry are skipped with a note (e.g. `hope` before it lands).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from hopelm.models.registry import list_models
from hopelm.train import trainer


def run_one(model: str, optim: str, steps: int, overrides: list[str], out_dir: Path) -> dict:
    over = [f"--model.name={model}", f"--optim.name={optim}", f"--train.max_steps={steps}",
            "--train.eval_interval=0", f"--train.log_interval={steps}", "--train.progress=false",
            "--train.tensorboard=false", "--checkpoint.interval=0",
            f"--train.out_dir={out_dir / f'{model}-{optim}'}", *overrides]
    cfg, tok, _ = trainer.prepare_run("tiny", None, over)
    t0 = time.perf_counter()
    out = trainer.train(cfg, tok)
    wall = time.perf_counter() - t0
    losses = [out["losses"][s] for s in sorted(out["losses"])]
    tokens = steps * cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len
    return {"model": model, "optim": optim, "steps": steps, "tokens": tokens,
            "val_loss": out["metrics"]["val_loss"], "val_bpb": out["metrics"]["val_bpb"],
            "train_loss_last10": sum(losses[-10:]) / len(losses[-10:]),
            "tokens_per_s": out["tokens_per_s"], "wall_s": wall, "skipped_steps": out["skipped_steps"],
            "config": out["config"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="transformer,hope")
    ap.add_argument("--optims", default="adamw,muon,m3")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/optimizers.json")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args, overrides = ap.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        sys.exit(f"benchmarks/optimizers.py: unrecognized arguments {bad}; config overrides look like --model.d_model=128.")
    known = set(list_models())
    models = [m for m in args.models.split(",") if m]
    skipped = [m for m in models if m not in known]
    for m in skipped:
        print(f"note: model {m!r} is not in the registry yet (known: {', '.join(sorted(known))}); skipped.",
              file=sys.stderr)
    models = [m for m in models if m in known]
    if not models:
        sys.exit("benchmarks/optimizers.py: none of the requested models exists.")

    rows = []
    with tempfile.TemporaryDirectory(prefix="hopelm-optim-bench-") as tmp:
        for model in models:
            for optim in [o for o in args.optims.split(",") if o]:
                print(f"== {model} / {optim}", file=sys.stderr, flush=True)
                rows.append(run_one(model, optim, args.steps, overrides, Path(tmp)))

    cfg = rows[0]["config"]
    header = (f"{args.steps} steps x {cfg['train']['batch_size']} x {cfg['data']['seq_len']} tokens "
              f"= {rows[0]['tokens']:,} tokens per run; d_model={cfg['model']['d_model']}, "
              f"n_layers={cfg['model']['n_layers']}, lr={cfg['optim']['lr']}, data={cfg['data']['path'] or 'vendored'}, "
              f"device={trainer.resolve_device(cfg['train']['device'])}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} torch thread(s) on {os.cpu_count()} CPUs")
    lines = [header, "", "| model | optimizer | val loss | val bits/byte | train loss (last 10) | tokens/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['optim']} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} | "
                     f"{r['train_loss_last10']:.4f} | {r['tokens_per_s']:,.0f} |")
    if skipped:
        lines.append(f"\nNot run (not in the registry yet): {', '.join(skipped)}.")
    print("\n".join(lines))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
              "skipped_models": skipped,
              "results": [{k: v for k, v in r.items() if k != "config"} for r in rows],
              "config": cfg}
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
