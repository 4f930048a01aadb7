"""Continual language modelling over a stream of books (EVALUATION.md §4 "Continual LM").

    hopelm eval continual-lm --model transformer --books 4 --steps 100 --out clm.json --plot clm.png

Protocol. N books are drawn (by seed) from a corpus split, PG19-mini's train split by default.
A model (a preset + overrides, or a checkpoint) is fine-tuned on book 1, then book 2, ..., each
for the same number of steps: plain sequential fine-tuning with the trainer's pieces (random
windows, `build_optimizer`, `lr_at`, clipping, non-finite steps skipped) and a fresh optimizer
and schedule per book, so that every book gets the same treatment whatever its place in the
stream. Before the stream and after each book, the held-out loss of every book, seen or not, is
measured in bits per byte:

    before[i] = loss on book i before any training on the stream (the init or the checkpoint)
    L[t][i]   = loss on book i after training on books 1..t+1 (0-indexed rows and columns)

Per book we report L[i][i] (right after learning it), L[T-1][i] (at the end), forgetting
L[T-1][i] − L[i][i] (> 0: later books undid some of it) and what the book's own training gained,
L[i-1][i] − L[i][i] (with L[-1] = before): a model that never learned a book cannot forget it.

Slices. A book's held-out text is the start of its last `test_fraction` (10%); its train slice is
the `train_bytes` just before that tail. They never overlap, and the train text is the text
nearest the test text (same characters, same part of the story), so learning a book shows on its
held-out text. Books too short for both slices are passed over.

Dynamic evaluation view (EVALUATION.md §1), for models with online CMS levels (hope,
hope_attention): every row is measured twice, by the model as it is (CMS levels update their
fast weights in context every period, SPEC §5) and by a twin with the same weights built with
cms_lrs zeroed (online updates off: the levels run with their slow weights θ_0). Both start
every window from a fresh state, so they differ by the in-context CMS updates only; carrying the
state across windows instead would also lengthen the attention / memory context and mix the two.
Windows default to max(128, 2C), C the smallest online period: a block is taught when the token
after it arrives, so a window of C tokens or fewer sees no update and the two views coincide.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hopelm.config import Config, ConfigError, apply_overrides, config_from_dict, load_config, parse_override
from hopelm.data import DataError, TokenData, WindowSampler, get_tokenizer, tokenizer_from_dict
from hopelm.data.corpus import read_text, resolve_path, source_files, split_files
from hopelm.eval.perplexity import bits_per_byte, evaluate_loss, window_bytes
from hopelm.models import model_from_config
from hopelm.optim.build import build_optimizer, lr_at


Span = tuple[int, int]


@dataclass
class Book:
    id: str
    train_text: str
    test_text: str
    train_span: Span               # [start, end) UTF-8 byte offsets in the book
    test_span: Span
    size: int                      # UTF-8 bytes of the whole book


def _doc_id(p: Path) -> str:
    return p.name.removesuffix(".gz").removesuffix(".txt")


def slice_book(n_bytes: int, train_bytes: int, test_bytes: int, test_fraction: float) -> tuple[Span, Span] | None:
    """(train span, test span) of a book of n_bytes, or None when it is too short for both."""
    cut = int(n_bytes * (1.0 - test_fraction))     # the held-out tail starts here
    if cut < train_bytes or n_bytes - cut < test_bytes:
        return None
    return (cut - train_bytes, cut), (cut, cut + test_bytes)


def select_books(path: str | Path, n: int, seed: int = 0, split: str = "train", train_bytes: int = 65536,
                 test_bytes: int = 16384, test_fraction: float = 0.1, ids: list[str] | None = None,
                 log: Callable[[str], None] | None = None) -> list[Book]:
    """n books from a folder of .txt/.txt.gz books: the `ids` given, in that order, or a seeded
    random order over the split (splits.json's list; every book when there is none), keeping the
    first n long enough for both slices. The stream order is the returned order."""
    root = resolve_path(str(path))
    if not root.exists():
        raise DataError(f"Data path {str(root)!r} does not exist.")
    if not root.is_dir():
        raise DataError(f"continual-lm needs a folder of .txt/.txt.gz books, got the file {str(root)!r}.")
    if n < 1 or train_bytes < 1 or test_bytes < 1 or not 0.0 < test_fraction < 1.0:
        raise DataError("continual-lm needs books >= 1, train and test bytes >= 1 and 0 < test_fraction < 1.")
    docs = [f for f in source_files(str(root)) if f.name != "splits.json"]
    if ids:
        by_id = {_doc_id(f): f for f in docs}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"Book id {missing[0]!r} is not in {str(root)!r}.")
        order = [by_id[i] for i in ids]
    else:
        pool = split_files(str(root), split) if (root / "splits.json").is_file() else docs
        order = random.Random(f"continual-lm/{seed}").sample(pool, len(pool))
    books: list[Book] = []
    for f in order:
        if len(books) == n:
            break
        data = read_text(f).encode("utf-8")
        spans = slice_book(len(data), train_bytes, test_bytes, test_fraction)
        if spans is None:
            if ids:
                raise DataError(f"Book {_doc_id(f)!r} ({len(data):,} bytes) is too short for {train_bytes:,} train bytes "
                                f"and {test_bytes:,} test bytes from its last {test_fraction:.0%}.")
            if log:
                log(f"  skipping book {_doc_id(f)} ({len(data):,} bytes): too short for the slices")
            continue
        (a, b), (c, d) = spans
        # A slice may cut a multi-byte character in half; dropping the fragment is harmless.
        books.append(Book(_doc_id(f), data[a:b].decode("utf-8", "ignore"), data[c:d].decode("utf-8", "ignore"),
                          (a, b), (c, d), len(data)))
    if len(books) < n:
        raise DataError(f"continual-lm needs {n} books but only {len(books)} of the {len(order)} in {str(root)!r} are "
                        f"long enough for {train_bytes:,} train bytes and {test_bytes:,} test bytes from their last "
                        f"{test_fraction:.0%}.")
    return books


# --------------------------------------------------------------------------------------------
def lm_metrics(L: list[list[float]], before: list[float] | None = None) -> dict[str, Any]:
    """Metrics of a loss matrix L[t][i] (lower is better), T rows after each book, T books.

    forgetting_i = L[T-1][i] − L[i][i]; F = its mean over i < T-1 (the last book has had no later
    book); BWT = mean_{i<T-1} (L[i][i] − L[T-1][i]) = −F, positive when later books helped (the
    sign convention of SPEC §8's BWT). With `before`: learned_i = L[i-1][i] − L[i][i] (L[-1] =
    before), and FWT = mean_{i>0} (before[i] − L[i-1][i]), how much the books before i lowered its
    loss before it was trained on."""
    T = len(L)
    if T < 1 or any(len(r) != T for r in L):
        raise ValueError(f"the loss matrix must be T x T with T >= 1, got {[len(r) for r in L]}.")
    diag, final = [L[i][i] for i in range(T)], list(L[-1])
    forgetting = [final[i] - diag[i] for i in range(T)]
    F = sum(forgetting[:-1]) / (T - 1) if T > 1 else 0.0
    out: dict[str, Any] = {"diag": diag, "final": final, "forgetting": forgetting, "F": F, "BWT": -F,
                           "mean_diag": sum(diag) / T, "mean_final": sum(final) / T}
    if before is not None:
        prev = [before] + [list(r) for r in L[:-1]]
        out["learned"] = [prev[i][i] - diag[i] for i in range(T)]
        out["FWT"] = sum(before[i] - L[i - 1][i] for i in range(1, T)) / (T - 1) if T > 1 else 0.0
    return out


def windows(tokens: list[int], seq_len: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows tiling the text end to end, every token scored once: [B, seq_len] pairs."""
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise DataError(f"A held-out slice has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}.")
    t = torch.tensor(tokens[:n * seq_len + 1], dtype=torch.long)
    x, y = t[:-1].view(n, seq_len), t[1:].view(n, seq_len)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def cms_off_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a model built with cms_lrs zeroed: CMS online updates off at test time."""
    cfg = dataclasses.replace(model.cfg, cms_lrs=[0.0] * len(model.cfg.cms_lrs))
    p = next(model.parameters())
    twin = model_from_config(cfg).to(device=p.device, dtype=p.dtype)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


# --------------------------------------------------------------------------------------------
def build(model: str = "transformer", preset: str = "tiny", checkpoint: str | None = None,
          overrides: list[str] | dict[str, Any] | None = None) -> tuple[torch.nn.Module, Config, Any]:
    """(model, resolved config, tokenizer): a fresh preset model, or a checkpoint's weights under
    its saved config (overrides may change optim/train settings, not parameter shapes)."""
    from hopelm.train.checkpoint import latest_checkpoint, load_checkpoint
    from hopelm.train.trainer import resolve_vocab
    if checkpoint:
        path = latest_checkpoint(checkpoint)
        if path is None:
            raise ConfigError(f"No checkpoint found in {checkpoint!r}.")
        ckpt = load_checkpoint(path)
        cfg = apply_overrides(config_from_dict(ckpt.config), overrides)
        tok = tokenizer_from_dict(ckpt.meta["tokenizer"])
        net = model_from_config(cfg.model)
        try:
            net.load_state_dict(ckpt.model_state)
        except RuntimeError as e:
            raise ConfigError(f"The overrides change the shapes of {checkpoint!r}'s weights "
                              f"({str(e).splitlines()[0]}).") from None
        return net, cfg, tok
    over = overrides if isinstance(overrides, dict) else dict(map(parse_override, overrides or []))
    over = {"model.name": model, **over}
    cfg = load_config(preset, overrides=over)
    tok = get_tokenizer(cfg.data.tokenizer)
    resolve_vocab(cfg, tok.vocab_size)
    torch.manual_seed(cfg.train.seed)
    return model_from_config(cfg.model), cfg, tok


def train_on(model: torch.nn.Module, cfg: Config, tokens: list[int], steps: int, seed: int,
             device: torch.device, autocast: Any) -> list[float]:
    """`steps` steps of the trainer's recipe on random windows of `tokens`; fresh optimizer."""
    seq_len, tcfg = cfg.data.seq_len, cfg.train
    sampler = WindowSampler(TokenData(np.asarray(tokens, dtype=np.int64), np.zeros(1, dtype=np.int64)),
                            seq_len, tcfg.batch_size, seed)
    ocfg = dataclasses.replace(cfg.optim, warmup_steps=min(cfg.optim.warmup_steps, steps // 10))
    opt = build_optimizer(model, ocfg)
    clip = tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf")
    losses = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, ocfg, steps)
        x, y = (t.to(device) for t in sampler.batch(step))
        with autocast():
            loss = model(x, y).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if math.isfinite(loss.item()) and torch.isfinite(norm):
            opt.step()                      # a non-finite step is skipped, as in the trainer
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def run_stream(model: torch.nn.Module, cfg: Config, tokenizer: Any, books: list[Book], steps: int,
               seed: int = 0, device: str = "cpu", eval_batch_size: int = 16, dynamic: bool = True,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train on `books` in order; return the bits-per-byte matrices and their metrics."""
    from hopelm.train.trainer import precision, resolve_device
    dev = resolve_device(device)
    dtype, autocast = precision(cfg.train.dtype, dev)
    model.to(device=dev, dtype=dtype)
    seq_len = cfg.data.seq_len
    train_tok = [tokenizer.encode(b.train_text) for b in books]
    if min(len(t) for t in train_tok) < seq_len + 1:
        raise DataError(f"A train slice encodes to fewer than data.seq_len + 1 = {seq_len + 1} tokens; "
                        "raise --train-bytes or lower --seq-len.")
    tests = [windows(tokenizer.encode(b.test_text), seq_len, eval_batch_size) for b in books]
    test_bytes = [window_bytes(w, tokenizer) for w in tests]
    online = dynamic and getattr(model, "cms_block", 0) > 0

    def row(m: torch.nn.Module) -> tuple[list[float], list[float]]:
        nats, bpb = [], []
        for w, nb in zip(tests, test_bytes):
            loss, n = evaluate_loss(m, w, dev, autocast)
            nats.append(loss)
            bpb.append(bits_per_byte(loss, n, nb))
        return nats, bpb

    def measure(tag: str) -> dict[str, list[float]]:
        out = dict(zip(("nats", "bpb"), row(model)))
        if online:
            out.update(zip(("nats_off", "bpb_off"), row(cms_off_twin(model))))
        if log:
            log(f"  {tag}: bits/byte " + " ".join(f"{v:.3f}" for v in out["bpb"]) +
                (("  | CMS off " + " ".join(f"{v:.3f}" for v in out["bpb_off"])) if online else ""))
        return out

    before, rows, train_losses = measure("before"), [], []
    for t, (book, tok) in enumerate(zip(books, train_tok)):
        t0 = time.time()
        losses = train_on(model, cfg, tok, steps, seed * 1000 + t, dev, autocast)
        tail = losses[-10:] or [float("nan")]
        train_losses.append(sum(tail) / len(tail))
        if log:
            log(f"book {t + 1}/{len(books)} ({book.id}): {steps} steps, train loss {train_losses[-1]:.4f}, "
                f"{time.time() - t0:.0f}s")
        rows.append(measure(f"after book {t + 1}"))
    L = [r["bpb"] for r in rows]
    result = {"model": model.cfg.name, "books": [b.id for b in books], "before": before["bpb"], "matrix": L,
              "before_nats": before["nats"], "matrix_nats": [r["nats"] for r in rows],
              "metrics": lm_metrics(L, before["bpb"]), "train_loss": train_losses,
              "test_bytes": test_bytes, "cms_online": online,
              "warmup_steps": min(cfg.optim.warmup_steps, steps // 10)}   # what train_on used, per book
    if online:
        L_off = [r["bpb_off"] for r in rows]
        result.update(before_off=before["bpb_off"], matrix_off=L_off, metrics_off=lm_metrics(L_off, before["bpb_off"]))
    return result


# --------------------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> str:
    from hopelm.eval.tasks_cli import _table
    m, on = result["metrics"], result["cms_online"]
    cols = [f"{j + 1}:{b}" for j, b in enumerate(result["books"])]
    row = lambda vals: dict(zip(cols, (f"{v:.3f}" for v in vals)))
    mat = [("before", row(result["before"]))] + [(f"after {t + 1}", row(r)) for t, r in enumerate(result["matrix"])]
    per_book = {"L_ii": m["diag"], "L_Ti": m["final"], "forgetting": m["forgetting"], "learned": m["learned"]}
    means = {"L_ii": m["mean_diag"], "L_Ti": m["mean_final"], "forgetting": m["F"],
             "learned": sum(m["learned"]) / len(m["learned"])}
    if on:
        per_book["L_Ti CMS off"] = result["metrics_off"]["final"]
        means["L_Ti CMS off"] = result["metrics_off"]["mean_final"]
    fmt = lambda k, v: f"{v:+.3f}" if k in ("forgetting", "learned") else f"{v:.3f}"
    per = [(c, {k: fmt(k, v[i]) for k, v in per_book.items()}) for i, c in enumerate(cols)]
    per.append(("mean", {k: fmt(k, v) for k, v in means.items()}))
    summary = (f"F {m['F']:+.4f} (mean forgetting of books 1..T-1)  BWT {m['BWT']:+.4f}  "
               f"FWT {m['FWT']:+.4f} bits/byte")
    if on:
        mo = result["metrics_off"]
        summary += (f"\nCMS online off at test time: mean L_ii {mo['mean_diag']:.4f}, "
                    f"mean L_Ti {mo['mean_final']:.4f}, F {mo['F']:+.4f} "
                    f"(on: {m['mean_diag']:.4f}, {m['mean_final']:.4f}, {m['F']:+.4f})")
    return "\n\n".join(["held-out bits/byte: row = after training on book t, column = book i",
                        _table(mat, "row"), _table(per, "book"), summary])


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Heatmap of bits/byte: rows before / after each book, columns books (CMS off beside it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(": CMS online on" if result["cms_online"] else "", result["before"], result["matrix"])]
    if result["cms_online"]:
        panels.append((": CMS online off", result["before_off"], result["matrix_off"]))
    T = len(result["books"])
    # The colour scale spans the trained rows: an untrained model's row would wash out the
    # differences that show forgetting, so it saturates (its numbers are printed in the cells).
    vals = [x for _, _, L in panels for r in L for x in r]
    lo, hi = min(vals), max(vals)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (1.6 + 0.7 * T), 1.4 + 0.45 * T), squeeze=False)
    for ax, (title, b, L) in zip(axes[0], panels):
        M = [b] + L
        im = ax.imshow(M, cmap="viridis_r", vmin=lo, vmax=hi, aspect="auto")
        for t, r in enumerate(M):
            for i, v in enumerate(r):
                ax.text(i, t, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v > (lo + hi) / 2 else "k")
        ax.set_xticks(range(T), result["books"], fontsize=7)
        ax.set_yticks(range(T + 1), ["before"] + [f"after {t + 1}" for t in range(T)], fontsize=7)
        ax.set_xlabel("evaluated book i"); ax.set_title(f"{result['model']}{title}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.04, label="held-out bits/byte")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hopelm eval continual-lm", allow_abbrev=False,
                                description=__doc__.split("\n")[0],
                                epilog="Other config settings as dotted overrides, e.g. --model.d_model=64 --optim.name=muon.")
    p.add_argument("--model", default="transformer", help="registry name (hopelm.list_models()); not with --checkpoint")
    p.add_argument("--preset", default="tiny", help="preset the model and optimizer settings come from")
    p.add_argument("--checkpoint", default=None, help="start from this checkpoint (run dir or checkpoint dir)")
    p.add_argument("--data", default=None, help="folder of .txt/.txt.gz books (default ../shared/data/pg19-mini)")
    p.add_argument("--split", default="train", help="splits.json list to draw from")
    p.add_argument("--books", type=int, default=4)
    p.add_argument("--book-ids", default=None, help="comma list of book ids, in stream order (instead of drawing)")
    p.add_argument("--steps", type=int, default=100, help="training steps per book")
    p.add_argument("--train-bytes", type=int, default=65536, help="train slice per book")
    p.add_argument("--test-bytes", type=int, default=16384, help="held-out slice per book")
    p.add_argument("--test-fraction", type=float, default=0.1, help="the held-out slice comes from this tail")
    p.add_argument("--seq-len", type=int, default=None,
                   help="window length (default 128, or twice the smallest online CMS period when larger)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="default: the preset's optim.lr")
    p.add_argument("--seed", type=int, default=0, help="book draw, model init and batches")
    p.add_argument("--no-dynamic", action="store_true", help="skip the CMS-online-off twin evaluation")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="continual_lm.json", help="JSON results file")
    p.add_argument("--plot", default=None, help="heatmap file (.png)")
    return p


def run(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    from hopelm.eval.runner import data_root
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    flags = [f"--train.batch_size={args.batch_size}", f"--train.seed={args.seed}"]
    flags += [f"--optim.lr={args.lr}"] if args.lr is not None else []
    model, cfg, tok = build(args.model, args.preset, args.checkpoint, flags + overrides)
    if args.steps < 1 or (args.seq_len is not None and args.seq_len < 1):
        raise ConfigError(f"--steps={args.steps} and --seq-len={args.seq_len} must be >= 1.")
    # An online CMS level is taught when the token after its block arrives, so a window of C
    # tokens or fewer (C = the smallest online period) sees no in-context update at all.
    C = model.cms_block
    cfg.data.seq_len = args.seq_len or max(128, 2 * C)
    if 0 < C and cfg.data.seq_len <= C:
        log(f"warning: windows of {cfg.data.seq_len} tokens see no CMS update (period {C}); CMS on and off will coincide")
    data = Path(args.data) if args.data else data_root() / "pg19-mini"
    ids = [s.strip() for s in args.book_ids.split(",") if s.strip()] if args.book_ids else None
    books = select_books(data, len(ids) if ids else args.books, args.seed, args.split, args.train_bytes,
                         args.test_bytes, args.test_fraction, ids, log)
    log(f"continual-lm: {cfg.model.name}, books {', '.join(b.id for b in books)}, {args.steps} steps/book")
    result = run_stream(model, cfg, tok, books, args.steps, args.seed, args.device, dynamic=not args.no_dynamic, log=log)
    counts = model.param_counts()
    result.update(model=cfg.model.name, params=counts["total"], non_embedding_params=counts["non_embedding"],
                  data=str(data), spans={b.id: {"train": b.train_span, "test": b.test_span, "size": b.size} for b in books},
                  steps_per_book=args.steps, tokens_per_book=args.steps * cfg.train.batch_size * cfg.data.seq_len,
                  checkpoint=args.checkpoint, config=cfg.to_dict(), argv=vars(args) | {"overrides": overrides})
    return result


def main(argv: list[str]) -> None:
    from hopelm.train.checkpoint import CheckpointError
    args, extra = parser().parse_known_args(argv)
    bad = [a for a in extra if not (a.startswith("--") and "=" in a and "." in a[2:].split("=", 1)[0])]
    try:
        if bad:
            raise ConfigError(f"Unrecognised argument {bad[0]!r} (config overrides look like --optim.lr=1e-3).")
        if args.threads:
            torch.set_num_threads(args.threads)
        t0 = time.time()
        result = run(args, extra)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"hopelm eval continual-lm: error: {e}", file=sys.stderr)
        sys.exit(2)
    result["seconds"] = round(time.time() - t0, 1)
    from hopelm.eval.tasks_cli import emit
    emit(result, table(result), args.out, plot, args.plot)


if __name__ == "__main__":
    main(sys.argv[1:])
