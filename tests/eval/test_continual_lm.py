"""Continual LM over a stream of books: book choice, slices, metrics, an end-to-end run."""
from __future__ import annotations

import contextlib
import json
import math
import random

import pytest
import torch

from hopelm.config import ConfigError
from hopelm.data import DataError
from hopelm.eval import continual_lm as clm
from hopelm.eval.tasks_cli import main

TINY = {"model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "data.seq_len": 64,
        "train.batch_size": 8, "optim.lr": 1e-2}


def write_books(root, sizes: dict[str, int], splits: dict[str, list[str]] | None = None) -> None:
    """Synthetic books of numbered lines (so any shared line is visible); book k writes with its
    own alphabet, so learning one book says little about the others."""
    (root / "books").mkdir(parents=True)
    for k, (name, size) in enumerate(sizes.items()):
        rng, letters = random.Random(name), "abcdefghijklmnopqrstuvwxyz"[(5 * k) % 20:(5 * k) % 20 + 6]
        lines, n = [], 0
        while n < size:
            words = ["".join(rng.choices(letters, k=rng.randint(2, 6))) for _ in range(8)]
            lines.append(f"{name}-{len(lines):05d} " + " ".join(words))
            n += len(lines[-1]) + 1
        (root / "books" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    if splits:
        (root / "splits.json").write_text(json.dumps(splits))


def test_book_choice_is_deterministic_and_slices_never_overlap(tmp_path):
    names = [f"b{i}" for i in range(6)]
    write_books(tmp_path, {n: 6000 for n in names} | {"short": 900},
                {"train": names[:5] + ["short"], "validation": names[5:]})
    a = clm.select_books(tmp_path, 3, seed=1, train_bytes=2000, test_bytes=400)
    assert [b.id for b in a] == [b.id for b in clm.select_books(tmp_path, 3, seed=1, train_bytes=2000, test_bytes=400)]
    orders = {tuple(b.id for b in clm.select_books(tmp_path, 5, seed=s, train_bytes=2000, test_bytes=400)) for s in range(6)}
    assert len(orders) > 1 and all(set(o) == set(names[:5]) for o in orders)   # the short book is passed over
    for b in a:
        (ta, tb), (sa, sb) = b.train_span, b.test_span
        assert tb - ta == 2000 and sb - sa == 400 and tb <= sa and sa == int(b.size * 0.9)
        test_lines = b.test_text.split("\n")[1:-1]          # whole lines only
        assert test_lines and not set(test_lines) & set(b.train_text.split("\n"))
    ids = [b.id for b in clm.select_books(tmp_path, 2, ids=["b5", "b0"], train_bytes=2000, test_bytes=400)]
    assert ids == ["b5", "b0"]
    with pytest.raises(DataError, match="needs 6 books but only 5 of the 6"):
        clm.select_books(tmp_path, 6, train_bytes=2000, test_bytes=400)
    with pytest.raises(DataError, match="too short"):
        clm.select_books(tmp_path, 1, ids=["short"], train_bytes=2000, test_bytes=400)


def test_metrics_by_hand():
    L = [[2.0, 3.0, 3.2],
         [2.4, 1.8, 3.0],
         [2.6, 2.1, 1.5]]
    m = clm.lm_metrics(L, before=[4.0, 4.0, 4.0])
    assert m["diag"] == [2.0, 1.8, 1.5] and m["final"] == [2.6, 2.1, 1.5]
    assert m["forgetting"] == pytest.approx([0.6, 0.3, 0.0])
    assert m["F"] == pytest.approx(0.45) and m["BWT"] == pytest.approx(-0.45)
    assert m["learned"] == pytest.approx([2.0, 1.2, 1.5])          # 4-2.0, 3.0-1.8, 3.0-1.5
    assert m["FWT"] == pytest.approx(((4 - 3.0) + (4 - 3.0)) / 2)   # before[i] - L[i-1][i]
    assert m["mean_final"] == pytest.approx(6.2 / 3)
    assert clm.lm_metrics([[1.0]])["F"] == 0.0
    with pytest.raises(ValueError):
        clm.lm_metrics([[1.0, 2.0]])


def test_stream_learns_then_forgets(tmp_path):
    write_books(tmp_path, {"x": 12000, "y": 12000})
    books = clm.select_books(tmp_path, 2, ids=["x", "y"], train_bytes=6000, test_bytes=1000)
    model, cfg, tok = clm.build("transformer", overrides=TINY)
    r = clm.run_stream(model, cfg, tok, books, steps=40)
    L, before = r["matrix"], r["before"]
    assert len(L) == 2 and all(len(row) == 2 and all(math.isfinite(v) for v in row) for row in L)
    assert len(before) == 2 and r["cms_online"] is False and "matrix_off" not in r
    assert L[0][0] < before[0] - 1.0        # training on book 1 taught the model book 1
    assert r["metrics"]["forgetting"][0] > 0  # and book 2, in other letters, undid some of it
    assert r["test_bytes"] == [(1000 - 1) // 64 * 64] * 2


def test_cli_with_the_cms_online_off_view(tmp_path, capsys):
    write_books(tmp_path / "d", {"p": 5000, "q": 5000, "r": 5000})
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    main(["continual-lm", "--model", "hope_attention", "--data", str(tmp_path / "d"), "--books", "2",
          "--steps", "2", "--seq-len", "64", "--batch-size", "2", "--train-bytes", "1500", "--test-bytes", "300",
          "--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.cms_periods=[16, 0]",
          "--model.cms_lrs=[0.05, 0.0]", "--out", str(out), "--plot", str(png)])
    r = json.loads(out.read_text())
    assert png.stat().st_size > 0 and "forgetting" in capsys.readouterr().out
    assert r["cms_online"] and len(r["matrix_off"]) == 2 and len(r["before_off"]) == 2
    # The twin differs only by the in-context CMS updates, and those do change the loss.
    assert all(math.isfinite(v) for row in r["matrix_off"] for v in row) and r["matrix_off"] != r["matrix"]
    with pytest.raises(SystemExit):
        main(["continual-lm", "--data", str(tmp_path / "d"), "--bogus"])
    assert "Unrecognised argument '--bogus'" in capsys.readouterr().err


def test_stream_starts_from_a_checkpoint(tmp_path):
    from hopelm.train.checkpoint import save_checkpoint
    # L[-1] must be the checkpoint's own loss, and optim overrides apply but shape changes do not.
    write_books(tmp_path / "d", {"x": 6000, "y": 6000})
    books = clm.select_books(tmp_path / "d", 2, ids=["x", "y"], train_bytes=3000, test_bytes=500)
    model, cfg, tok = clm.build("transformer", overrides=TINY)
    clm.train_on(model, cfg, tok.encode(books[0].train_text), 20, 0, torch.device("cpu"), contextlib.nullcontext)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=None, config=cfg.to_dict(),
                    meta={"step": 20, "tokenizer": tok.to_dict()})
    loaded, cfg2, tok2 = clm.build(checkpoint=str(tmp_path / "ck"), overrides=["--optim.lr=1e-3"])
    assert cfg2.optim.lr == 1e-3 and cfg2.model == cfg.model
    r = clm.run_stream(loaded, cfg2, tok2, books, steps=1)
    fresh = clm.run_stream(clm.build("transformer", overrides=TINY)[0], cfg, tok, books, steps=1)
    assert r["before"][0] < fresh["before"][0] - 1.0
    with pytest.raises(ConfigError, match="shapes"):
        clm.build(checkpoint=str(tmp_path / "ck"), overrides=["--model.d_model=64"])
