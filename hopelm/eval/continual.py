"""Class-incremental intent classification (EVALUATION.md §4) with the metrics of SPEC §8.

Any dataset given as (text, label) rows plus a task split (the labels of each task, in arrival
order) works; loaders exist for CLINC150 (Larson et al. 2019; its 10 domains of 15 intents) and
Banking77 (Casanueva et al. 2020; 7 tasks of 11 intents in categories.json order).

Classification is generative: the input is the utterance's UTF-8 bytes and a SEP token, and the
model emits a label token (one extra vocabulary entry per intent). Prediction scores every label
seen so far and takes the best (class-incremental: no task identity at test time), so a_{t,i} = 0
for tasks i not yet seen. Tasks arrive in sequence, each trained once; after each task every task
is evaluated, filling a_{t,i}. Methods: sequential fine-tuning (lower bound), EWC (online EWC,
Kirkpatrick et al. 2017 / Schwarz et al. 2018), a small replay buffer, and joint training on all
tasks seen so far (upper bound). HOPE's CMS on/off is a model override, not a method.
"""
from __future__ import annotations

import csv
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hopelm.eval.runner import IGNORE, Example, answer_loss, collate, data_root, skipped_steps, small_model, train

SEP = 256            # after the 256 byte tokens; label tokens follow
METHODS = ("finetune", "ewc", "replay", "joint")


@dataclass
class IntentData:
    name: str
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    tasks: list[list[str]]

    def __post_init__(self) -> None:
        labels = [l for t in self.tasks for l in t]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{self.name}: a label belongs to more than one task.")
        missing = {l for _, l in self.train + self.test} - set(labels)
        if missing:
            raise ValueError(f"{self.name}: labels {sorted(missing)[:5]} are in no task.")

    @property
    def labels(self) -> list[str]:
        return [l for t in self.tasks for l in t]


def load_clinc150(root: str | Path | None = None) -> IntentData:
    """CLINC150 data_full.json (in-scope rows only), one task per domain in domains.json order."""
    base = Path(root) if root else data_root() / "clinc150"
    d = json.loads((base / "data_full.json").read_text())
    domains = json.loads((base / "domains.json").read_text())
    return IntentData("clinc150", [tuple(r) for r in d["train"]], [tuple(r) for r in d["test"]], list(domains.values()))


def load_banking77(root: str | Path | None = None, n_tasks: int = 7) -> IntentData:
    """Banking77 train/test CSVs; categories.json order cut into n_tasks equal tasks."""
    base = Path(root) if root else data_root() / "banking77"
    cats = json.loads((base / "categories.json").read_text())
    if len(cats) % n_tasks:
        raise ValueError(f"{len(cats)} intents do not split into {n_tasks} equal tasks.")
    k = len(cats) // n_tasks

    def rows(f: str) -> list[tuple[str, str]]:
        with open(base / f, newline="", encoding="utf-8") as fh:
            return [(r["text"], r["category"]) for r in csv.DictReader(fh)]
    return IntentData("banking77", rows("train.csv"), rows("test.csv"), [cats[i:i + k] for i in range(0, len(cats), k)])


# --------------------------------------------------------------------------------------------
# Metrics (SPEC §8): A[t][i] = accuracy on task i after training through task t (0-indexed).
def cl_metrics(A: list[list[float]]) -> dict[str, Any]:
    """ACC_T = mean_i a_{T,i}; F_T = mean_{i<T} (max_{t<T} a_{t,i} − a_{T,i});
    BWT = mean_{i<T} (a_{T,i} − a_{i,i}); plus a_{i,i} and the final row."""
    T = len(A)
    last = A[-1]
    acc = sum(last) / T
    if T == 1:
        return {"ACC": acc, "F": 0.0, "BWT": 0.0, "diag": [A[0][0]], "final": list(last)}
    f = sum(max(A[t][i] for t in range(T - 1)) - last[i] for i in range(T - 1)) / (T - 1)
    bwt = sum(last[i] - A[i][i] for i in range(T - 1)) / (T - 1)
    return {"ACC": acc, "F": f, "BWT": bwt, "diag": [A[i][i] for i in range(T)], "final": list(last)}


def plot_matrix(A: list[list[float]], path: str | Path, title: str = "") -> None:
    """Heatmap of a_{t,i}: rows = after training task t, columns = evaluated task i."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    T = len(A)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * T, 1 + 0.45 * T))
    im = ax.imshow(A, vmin=0, vmax=1, cmap="viridis")
    for t in range(T):
        for i in range(T):
            ax.text(i, t, f"{A[t][i]:.2f}", ha="center", va="center", fontsize=7, color="w" if A[t][i] < 0.6 else "k")
    ax.set_xlabel("evaluated task i"); ax.set_ylabel("after training task t"); ax.set_title(title, fontsize=9)
    ax.set_xticks(range(T)); ax.set_yticks(range(T))
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
def encode(text: str, label_id: int, max_len: int) -> Example:
    return Example.qa(list(text.encode("utf-8"))[:max_len] + [SEP], [SEP + 1 + label_id])


@torch.no_grad()
def accuracy(model: torch.nn.Module, examples: list[Example], allowed: list[int], batch_size: int = 64) -> float:
    """Fraction of examples whose best label token among `allowed` label ids is the right one."""
    if not examples:
        return 0.0
    model.eval()
    allowed_t = torch.tensor(allowed) + SEP + 1
    hits = 0
    for s in range(0, len(examples), batch_size):
        idx, tgt = collate(examples[s:s + batch_size])
        pos = (tgt != IGNORE).float().argmax(1)                        # the answer position
        logits = model(idx)[0][torch.arange(len(idx)), pos][:, allowed_t]   # [B, n_allowed]
        hits += (allowed_t[logits.argmax(-1)] == tgt[torch.arange(len(idx)), pos]).sum().item()
    model.train()
    return hits / len(examples)


class EWC:
    """Online EWC: after each task, F += diag empirical Fisher (per-example squared gradients of
    the answer loss) and θ* = θ; the penalty is (λ/2) Σ F (θ − θ*)²."""

    def __init__(self, model: torch.nn.Module, lam: float):
        self.model, self.lam = model, lam
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def consolidate(self, examples: list[Example]) -> None:
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        for e in examples:
            self.model.zero_grad(set_to_none=True)
            answer_loss(self.model, *collate([e])).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2 / len(examples)
        self.model.zero_grad(set_to_none=True)
        for n, p in params.items():
            self.fisher[n] = self.fisher.get(n, 0) + fisher[n]
            self.anchor[n] = p.detach().clone()

    def penalty(self) -> torch.Tensor:
        if not self.fisher:
            return torch.zeros(())
        return 0.5 * self.lam * sum((self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
                                    for n, p in self.model.named_parameters() if n in self.fisher)


def run_continual(data: IntentData, method: str = "finetune", model_name: str = "transformer", seed: int = 0,
                  steps_per_task: int = 200, batch_size: int = 32, lr: float = 1e-3, max_len: int = 64,
                  train_per_class: int = 40, test_per_class: int = 10, ewc_lambda: float = 100.0,
                  replay_per_class: int = 2, ewc_samples: int = 64, d_model: int = 64, n_layers: int = 2,
                  n_heads: int = 2, log: Callable[[str], None] | None = None, **model_overrides: Any) -> dict[str, Any]:
    """Train on the tasks in order with `method`; return the accuracy matrix and its metrics."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    rng = random.Random(f"{data.name}/{method}/{seed}")
    label_id = {l: i for i, l in enumerate(data.labels)}

    def per_task(rows: list[tuple[str, str]], k: int) -> list[list[Example]]:
        by_label: dict[str, list[tuple[str, str]]] = {}
        for r in rows:
            by_label.setdefault(r[1], []).append(r)
        out = []
        for labels in data.tasks:
            ex = []
            for l in labels:
                pool = by_label.get(l, [])
                ex += [encode(t, label_id[l], max_len) for t, _ in random.Random(f"{seed}/{l}").sample(pool, min(k, len(pool)))]
            out.append(ex)
        return out

    train_sets, test_sets = per_task(data.train, train_per_class), per_task(data.test, test_per_class)
    T = len(data.tasks)
    model = small_model(model_name, SEP + 1 + len(label_id), d_model, n_layers, n_heads, seed=seed, **model_overrides)
    ewc = EWC(model, ewc_lambda) if method == "ewc" else None
    buffer: list[Example] = []
    A = [[0.0] * T for _ in range(T)]
    skipped = []                                    # non-finite steps skipped, per task
    for t in range(T):
        current = [e for s in train_sets[:t + 1] for e in s] if method == "joint" else train_sets[t]

        def batches(step: int) -> list[Example]:
            if method == "replay" and buffer:
                half = batch_size // 2
                return rng.choices(current, k=batch_size - half) + rng.choices(buffer, k=half)
            return rng.choices(current, k=batch_size)
        losses = train(model, batches, steps_per_task, lr=lr, warmup=min(20, steps_per_task // 10),
                       extra_loss=ewc.penalty if ewc else None)
        skipped.append(skipped_steps(losses))
        if ewc:
            ewc.consolidate(rng.sample(train_sets[t], min(ewc_samples, len(train_sets[t]))))
        if method == "replay":
            for labels in [data.tasks[t]]:
                for l in labels:
                    pool = [e for e in train_sets[t] if e.targets[-1] == SEP + 1 + label_id[l]]
                    buffer += rng.sample(pool, min(replay_per_class, len(pool)))
        seen = [label_id[l] for task in data.tasks[:t + 1] for l in task]
        for i in range(t + 1):
            A[t][i] = accuracy(model, test_sets[i], seen)
        if log:
            log(f"  after task {t}: " + " ".join(f"{a:.2f}" for a in A[t][:t + 1]) +
                (f"  ({skipped[t]} non-finite steps skipped)" if skipped[t] else ""))
    return {"dataset": data.name, "method": method, "model": model_name, "seed": seed, "matrix": A,
            "skipped_steps": skipped, **cl_metrics(A), "steps_per_task": steps_per_task, "train_per_class": train_per_class,
            "test_per_class": test_per_class, "params": sum(p.numel() for p in model.parameters()),
            "overrides": model_overrides}


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of ACC, F, BWT and mean a_{i,i} over seeds."""
    out = {}
    for key in ("ACC", "F", "BWT", "mean_diag"):
        v = [r[key] if key != "mean_diag" else sum(r["diag"]) / len(r["diag"]) for r in runs]
        out[key] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
    return out
