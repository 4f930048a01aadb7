"""Where hope's non-finite training steps on BABILong come from: a trace of the eval runner's training.

Trains a model exactly as `hopelm eval babilong --babi-tasks 2,4,5` does (runner.train's optimizer,
schedule, batches and seed 0) and prints every step's loss and gradient norm. At the first step whose
loss or gradient is not finite it reports which parameters got a non-finite gradient and, per batch
row, the first position where the first block's mixer output is not finite next to the row's real
length (beyond it lies padding), then stops. `--pad 0` pads rows with byte 0, as the runners did
before commit a9c721a; the default pads a row with its own tokens, as they do now. `--set` changes
the model config (e.g. `--set memory_max_norm=0` for the unbounded memories), `--save` keeps the
weights and the batch of the failing step for study without retraining.

    OMP_NUM_THREADS=1 python benchmarks/babilong_nonfinite.py --pad 0
"""
from __future__ import annotations

import argparse
import math
import random

import torch

from hopelm.config import parse_override
from hopelm.eval import runner
from hopelm.eval.babilong import BabilongTask


def first_non_finite_positions(model: torch.nn.Module, idx: torch.Tensor) -> list[int | None]:
    """Per row, the first position where block 0's mixer output is not finite (None: all finite)."""
    outs = []
    hook = model.blocks[0].mixer.register_forward_hook(lambda m, i, o: outs.append(o[0]))
    with torch.no_grad():
        model(idx)
    hook.remove()
    bad = ~torch.isfinite(torch.cat(outs, 1)).all(-1)                 # [B, T] (online CMS: one call per block)
    return [int(r.nonzero()[0]) if r.any() else None for r in bad]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hope")
    p.add_argument("--pad", type=int, default=None, help="pad token (default: repeat the row's own tokens)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, as in `hopelm eval --set` (repeatable)")
    p.add_argument("--save", default=None, help="write the weights and the batch of the first non-finite step "
                   "to this .safetensors file (to study the failure without retraining)")
    a = p.parse_args()
    torch.set_num_threads(1)
    root = runner.data_root()
    task = BabilongTask((2, 4, 5), 0, (0,), root=str(root / "babi"), pg19_root=str(root / "pg19-mini"))
    overrides = dict(parse_override(f"model.{kv}") for kv in a.set)
    overrides = {k.removeprefix("model."): v for k, v in overrides.items()}
    model = runner.small_model(a.model, task.vocab_size, 64, 2, 2, seed=0, **overrides)
    rng = random.Random(f"{task.name}/train/0")          # run_task's stream for seed 0
    lr, warmup = 1e-3, min(50, a.steps // 10)           # run_task's and train's defaults
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr * runner.lr_scale(step, a.steps, warmup)
        examples = task.train_batch(rng, 32)
        idx, tgt = runner.collate(examples, pad=a.pad)
        loss = runner.answer_loss(model, idx, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        print(f"step {step} T={idx.shape[1]} loss {loss.item():.4f} grad norm {norm.item():.3g}", flush=True)
        if math.isfinite(loss.item()) and math.isfinite(norm.item()):
            opt.step()
            continue
        bad = [n for n, q in model.named_parameters() if q.grad is not None and not torch.isfinite(q.grad).all()]
        if a.save:
            from safetensors.torch import save_file
            save_file({**{"model." + n: t.detach().contiguous() for n, t in model.state_dict().items()},
                       "batch.idx": idx.contiguous()}, a.save)
        print(f"first non-finite step {step}: {len(bad)} parameters with a non-finite gradient, e.g. {bad[:3]}")
        for b, pos in enumerate(first_non_finite_positions(model, idx)):
            if pos is not None:
                n = len(examples[b].tokens)
                print(f"  row {b}: real length {n}, mixer output first non-finite at position {pos}"
                      f" ({'padding' if pos >= n else 'real tokens'})")
        break
    else:
        print(f"no non-finite step in {a.steps} steps")


if __name__ == "__main__":
    main()
