"""Train-then-evaluate runner for any registry model on a token-sequence task (EVALUATION.md §2–3).

A task is a deterministic generator of `Example`s: a token sequence and, aligned with it, the
token the model must predict at each position (IGNORE elsewhere). The loss is taken on those
answer positions only. For each seed the runner builds a small model with `hopelm.build_model`,
trains it with AdamW for N steps on freshly generated batches, and reports accuracy per test bin.

Accuracy is exact match: an example counts as correct when every answer position is right.
Under greedy decoding this is the same as "the generated answer equals the reference" (the
greedy continuation matches iff each teacher-forced argmax does), so `mode="teacher"` scores in
one parallel pass; `mode="generate"` runs `model.generate` on the prompt, which is the literal
protocol (RULER) and the one to use for models whose decoding path differs from their forward.
"""
from __future__ import annotations

import math
import os
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class Example:
    tokens: list[int]              # model input
    targets: list[int]             # aligned with tokens: token to predict there, or IGNORE
    bin: Any = 0                   # test bin (length range, (length, depth) cell, ...)
    prompt_len: int | None = None  # for prompt -> answer examples: where the answer starts
    meta: dict = field(default_factory=dict)

    @classmethod
    def qa(cls, prompt: list[int], answer: list[int], bin: Any = 0, **meta: Any) -> "Example":
        """A prompt followed by an answer; the loss is on the answer tokens only."""
        tokens = prompt + answer[:-1]
        targets = [IGNORE] * (len(prompt) - 1) + answer
        return cls(tokens, targets, bin, len(prompt), dict(meta, answer=answer))


class Task(Protocol):
    name: str
    vocab_size: int

    def train_batch(self, rng: random.Random, n: int) -> list[Example]: ...
    def test_set(self, rng: random.Random) -> list[Example]: ...


def data_root() -> Path:
    """`$HOPELM_DATA`, else `../shared/data` beside the checkout (where CI and sessions find it)."""
    env = os.environ.get("HOPELM_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def collate(examples: list[Example], pad: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: [B, T] inputs and [B, T] targets (IGNORE on padding).

    A row is padded by repeating its own tokens (or with the token `pad`, if given). What the padding
    holds cannot change the loss or any answer (the models are causal and padded targets are
    ignored), but it is still computed:
    hundreds of one constant pad token drove hope's self-referential projection memories to inf,
    and 0 × inf in the backward made the whole batch's gradient NaN (BABILong, docs/results.md)."""
    T = max(len(e.tokens) for e in examples)
    idx = torch.empty((len(examples), T), dtype=torch.long)
    tgt = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        row = torch.tensor(e.tokens)
        idx[b] = row.repeat(-(-T // len(row)))[:T] if pad is None else F.pad(row, (0, T - len(row)), value=pad)
        tgt[b, :len(e.targets)] = torch.tensor(e.targets)
    return idx, tgt


def answer_loss(model: torch.nn.Module, idx: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over answer positions only (the model is called without targets so
    every architecture computes the same thing)."""
    logits = model(idx)[0]
    return F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def score(model: torch.nn.Module, examples: list[Example], batch_size: int = 32,
          mode: str = "teacher") -> list[tuple[bool, int, int]]:
    """Per example: (exact match, answer positions right, answer positions)."""
    was = model.training
    model.eval()
    out: list[tuple[bool, int, int]] = []
    if mode == "teacher":
        for s in range(0, len(examples), batch_size):
            idx, tgt = collate(examples[s:s + batch_size])
            pred = model(idx)[0].argmax(-1)
            mask = tgt != IGNORE
            right = ((pred == tgt) & mask).sum(1)
            n = mask.sum(1)
            out += [(bool(r == k), int(r), int(k)) for r, k in zip(right, n)]
    elif mode == "generate":
        for e in examples:   # one at a time: prompts differ in length and decoding is greedy
            ans = e.meta["answer"]
            gen = model.generate(torch.tensor([e.tokens[:e.prompt_len]]), len(ans), temperature=0)
            got = gen[0, e.prompt_len:].tolist()
            right = sum(int(a == b) for a, b in zip(got, ans))
            out.append((got == ans, right, len(ans)))
    else:
        raise ValueError(f"mode={mode!r} must be 'teacher' or 'generate'.")
    model.train(was)
    return out


def accuracy_by_bin(examples: list[Example], scores: list[tuple[bool, int, int]],
                    metric: str = "exact") -> dict[str, float]:
    """Accuracy per bin: fraction of exact matches, or (metric="token") of answer positions."""
    hit: dict[str, list[float]] = {}
    for e, (ok, right, n) in zip(examples, scores):
        h = hit.setdefault(str(e.bin), [0.0, 0.0])
        h[0] += ok if metric == "exact" else right
        h[1] += 1 if metric == "exact" else n
    return {b: h[0] / max(h[1], 1) for b, h in hit.items()}


def small_model(name: str, vocab_size: int, d_model: int = 32, n_layers: int = 2, n_heads: int = 2,
                seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A small registry model for synthetic tasks (tiny preset, widths overridden)."""
    import hopelm
    torch.manual_seed(seed)
    return hopelm.build_model(name, preset="tiny", vocab_size=vocab_size, d_model=d_model,
                              n_layers=n_layers, n_heads=n_heads, **overrides)


def lr_scale(step: int, steps: int, warmup: int) -> float:
    """The runners' schedule: linear warmup over `warmup` steps, cosine decay to 10% over `steps`."""
    w = (step + 1) / warmup if step < warmup else 1.0
    return min(w, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1))))


def train(model: torch.nn.Module, batches: Callable[[int], list[Example]], steps: int,
          lr: float = 3e-3, weight_decay: float = 0.0, warmup: int = 0, grad_clip: float = 1.0,
          extra_loss: Callable[[], torch.Tensor] | None = None) -> list[float]:
    """AdamW on answer-position cross-entropy for `steps` steps; `batches(step)` yields examples.
    Linear warmup then cosine decay to 10%. Returns the loss of every step.

    A step whose loss or gradient norm is not finite is skipped, as the trainer does (DESIGN.md,
    reliability rules): the weights and the optimizer's moments stay as they were, and the step's
    loss is returned as NaN, so `skipped_steps(losses)` counts the skips."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    losses = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * lr_scale(step, steps, warmup)
        idx, tgt = collate(batches(step))
        loss = answer_loss(model, idx, tgt)
        if extra_loss is not None:
            loss = loss + extra_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
        value, norm = torch.stack([loss.detach().float(), norm.float()]).tolist()   # one device sync
        if math.isfinite(value) and math.isfinite(norm):
            opt.step()
            losses.append(value)
        else:   # one non-finite step must not poison the weights and AdamW's moments for the rest of the run
            opt.zero_grad(set_to_none=True)
            losses.append(float("nan"))
    return losses


def skipped_steps(losses: list[float]) -> int:
    """How many steps `train` skipped (recorded as NaN)."""
    return sum(not math.isfinite(v) for v in losses)


def last_finite(losses: list[float]) -> float:
    """The loss of the last step that trained (NaN if none did)."""
    return next((v for v in reversed(losses) if math.isfinite(v)), float("nan"))


def summarize(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation, min and max over seeds, per bin."""
    bins = list(dict.fromkeys(b for r in per_seed for b in r))
    out = {}
    for b in bins:
        v = [r[b] for r in per_seed if b in r]
        out[b] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                  "min": min(v), "max": max(v), "n": len(v)}
    return out


def length_curve(per_seed: list[dict[str, float]]) -> dict[int, dict[str, float]]:
    """Accuracy against context length: bins named like "qa1,L=512" or "L=512,d=0.25" are averaged
    over everything but their length within each seed (tasks, depths), then `summarize`d over seeds.
    Lengths come back in increasing order."""
    per_len: list[dict[str, float]] = []
    for acc in per_seed:
        groups: dict[int, list[float]] = {}
        for b, a in acc.items():
            lengths = [int(part[2:]) for part in b.split(",") if part.startswith("L=")]
            if len(lengths) != 1:
                raise ValueError(f"bin {b!r} names no single length 'L=<tokens>'.")
            groups.setdefault(lengths[0], []).append(a)
        per_len.append({str(L): statistics.fmean(v) for L, v in groups.items()})
    return {int(L): s for L, s in sorted(summarize(per_len).items(), key=lambda kv: int(kv[0]))}


def run_task(task: Task, model_name: str = "transformer", seeds: int = 3, steps: int = 500,
             batch_size: int = 32, lr: float = 1e-3, mode: str = "teacher", metric: str = "exact",
             d_model: int = 64, n_layers: int = 2, n_heads: int = 2, log: Callable[[str], None] | None = None,
             **model_overrides: Any) -> dict[str, Any]:
    """Train a fresh model per seed on `task`, evaluate on its test set; seed s fixes the model
    initialisation, the training stream and the test set alike."""
    per_seed, losses, skips = [], [], []
    for seed in range(seeds):
        model = small_model(model_name, task.vocab_size, d_model, n_layers, n_heads, seed=seed, **model_overrides)
        rng = random.Random(f"{task.name}/train/{seed}")
        tr = train(model, lambda step: task.train_batch(rng, batch_size), steps, lr=lr, warmup=min(50, steps // 10))
        test = task.test_set(random.Random(f"{task.name}/test/{seed}"))
        acc = accuracy_by_bin(test, score(model, test, mode=mode), metric)
        per_seed.append(acc)
        losses.append(last_finite(tr))
        skips.append(skipped_steps(tr))
        if log:
            log(f"  seed {seed}: final train loss {losses[-1]:.4f}" +
                (f" ({skips[-1]} of {steps} steps skipped: non-finite loss or gradient)" if skips[-1] else "") +
                "  " + "  ".join(f"{b}: {a:.3f}" for b, a in acc.items()))
    n_params = sum(p.numel() for p in model.parameters())
    return {"task": task.name, "model": model_name, "seeds": seeds, "steps": steps, "batch_size": batch_size,
            "lr": lr, "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "params": n_params,
            "metric": metric, "mode": mode, "final_train_loss": losses, "skipped_steps": skips, "per_seed": per_seed,
            "summary": summarize(per_seed), "overrides": model_overrides}
