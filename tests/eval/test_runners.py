"""Every runner completes a tiny end-to-end smoke run (d_model=32, 1–2 layers, a few steps)."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from hopelm.eval import continual, runner
from hopelm.eval.babilong import BabilongTask
from hopelm.eval.formal import FormalTask
from hopelm.eval.niah import NIAHTask
from hopelm.eval.synthetic import MADTask, MQARTask
from hopelm.eval.tasks_cli import main

from .conftest import need

TINY = dict(seeds=1, steps=3, batch_size=4, d_model=32, n_layers=1, n_heads=2)


def test_formal_and_mqar_runs_are_deterministic():
    a = runner.run_task(FormalTask("parity", n_test=8), **{**TINY, "seeds": 2})
    b = runner.run_task(FormalTask("parity", n_test=8), **{**TINY, "seeds": 2})
    assert a["per_seed"] == b["per_seed"] and a["final_train_loss"] == b["final_train_loss"]
    assert set(a["summary"]) == {"bin0 (1-40)", "bin1 (41-100)"} and a["summary"]["bin0 (1-40)"]["n"] == 2
    r = runner.run_task(MQARTask(256, ((32, 4),), n_test=4), metric="token", **TINY)
    assert 0 <= r["summary"]["T=32,kv=4"]["mean"] <= 1


@pytest.mark.parametrize("kind", MADTask.KINDS)
def test_mad_runs(kind):
    r = runner.run_task(MADTask(kind, seq_len=24, n_test=4, n_facts=16), **TINY)
    assert list(r["summary"]) == ["L=24"]


def test_teacher_forced_exact_match_equals_greedy_generation():
    # Greedy decoding reproduces the answer iff every teacher-forced argmax is right.
    for kind, vocab in (("selective_copy", 16), ("in_context_recall", 8)):
        task = MADTask(kind, vocab_size=vocab, seq_len=20)
        model = runner.small_model("transformer", vocab, n_layers=1)
        runner.train(model, lambda s: task.train_batch(random.Random(s), 16), 30, lr=1e-2)
        test = task.test_set(random.Random(1))[:40]
        teacher, gen = runner.score(model, test, mode="teacher"), runner.score(model, test, mode="generate")
        assert [t[0] for t in teacher] == [g[0] for g in gen]
        if kind == "in_context_recall":                     # one answer token: identical scores
            assert teacher == gen and any(t[0] for t in teacher)


@need("pg19-mini")
def test_niah_run():
    task = NIAHTask("number", train_length=300, lengths=(300, 400), depths=(0.0, 1.0), n_test=1)
    r = runner.run_task(task, mode="generate", **TINY)
    assert set(r["summary"]) == {"L=300,d=0", "L=300,d=1", "L=400,d=0", "L=400,d=1"}


@need("babi")
@need("pg19-mini")
def test_babilong_run():
    r = runner.run_task(BabilongTask((1,), lengths=(0, 200), n_test=2), mode="generate", **TINY)
    assert set(r["summary"]) == {"qa1,L=0", "qa1,L=200"}


def _toy_intents() -> continual.IntentData:
    words = ["red", "green", "blue", "cat", "dog", "owl"]
    rows = [(f"{w} {i}", w) for w in words for i in range(6)]
    return continual.IntentData("toy", rows, rows, [words[:2], words[2:4], words[4:]])


@pytest.mark.parametrize("method", continual.METHODS)
def test_continual_methods(method):
    r = continual.run_continual(_toy_intents(), method, steps_per_task=3, batch_size=4, d_model=32, n_layers=1,
                                ewc_samples=4, train_per_class=4, test_per_class=2)
    A = r["matrix"]
    assert len(A) == 3 and all(A[t][i] == 0.0 for t in range(3) for i in range(t + 1, 3))
    assert {"ACC", "F", "BWT", "diag", "final"} <= set(r) and r["skipped_steps"] == [0, 0, 0]
    assert r == continual.run_continual(_toy_intents(), method, steps_per_task=3, batch_size=4, d_model=32,
                                        n_layers=1, ewc_samples=4, train_per_class=4, test_per_class=2)


def test_intent_data_validates_split():
    with pytest.raises(ValueError, match="in no task"):
        continual.IntentData("bad", [("x", "a"), ("y", "b")], [], [["a"]])


@need("clinc150")
@need("banking77")
def test_loaders():
    c = continual.load_clinc150()
    assert len(c.tasks) == 10 and all(len(t) == 15 for t in c.tasks) and len(c.train) == 15000 and len(c.test) == 4500
    b = continual.load_banking77()
    assert len(b.tasks) == 7 and all(len(t) == 11 for t in b.tasks) and len(b.train) == 10003 and len(b.test) == 3080


def test_cli_formal_and_continual(tmp_path, capsys, monkeypatch):
    out, png = tmp_path / "f.json", tmp_path / "f.png"
    main(["formal", "--languages", "aa", "--seeds", "1", "--steps", "2", "--n-test", "4", "--d-model", "32",
          "--n-layers", "1", "--batch-size", "4", "--out", str(out), "--plot", str(png)])
    res = json.loads(out.read_text())
    assert res["runs"][0]["row"] == "aa" and png.stat().st_size > 0
    assert "bin1 (41-100)" in capsys.readouterr().out
    monkeypatch.setattr(continual, "load_clinc150", lambda root=None: _toy_intents())
    out = tmp_path / "c.json"
    main(["continual", "--methods", "finetune,replay", "--seeds", "1", "--steps", "2", "--n-test", "2", "--d-model", "32",
          "--n-layers", "1", "--batch-size", "4", "--train-per-class", "3", "--out", str(out), "--plot", str(tmp_path / "c.png")])
    res = json.loads(out.read_text())
    assert [r["row"] for r in res["runs"]] == ["finetune", "replay"] and (tmp_path / "c.replay.png").exists()
    assert "BWT" in capsys.readouterr().out


def test_set_values_are_read_like_config_overrides():
    """--set KEY=VALUE takes TOML literals, so lists (e.g. cms_lrs for CMS off) reach the config."""
    from hopelm.eval.tasks_cli import _value
    assert _value("[0.0,0.0,0.0]") == [0.0, 0.0, 0.0]
    assert _value("false") is False and _value("2") == 2 and _value("1e-3") == 1e-3
    assert _value("sequential") == "sequential"


def test_length_curve_averages_tasks_and_depths_within_a_seed_then_over_seeds():
    per_seed = [{"qa1,L=512": 0.2, "qa2,L=512": 0.4, "qa1,L=0": 1.0, "qa2,L=0": 0.5},
                {"qa1,L=512": 0.0, "qa2,L=512": 0.2, "qa1,L=0": 0.5, "qa2,L=0": 0.0}]
    c = runner.length_curve(per_seed)
    assert list(c) == [0, 512]                                  # numeric order, not string order
    assert c[0]["mean"] == pytest.approx((0.75 + 0.25) / 2) and c[0]["n"] == 2
    assert c[512]["mean"] == pytest.approx(0.2) and c[512]["std"] == pytest.approx(0.1 * 2 ** 0.5)
    niah = runner.length_curve([{"L=1024,d=0": 1.0, "L=1024,d=1": 0.0, "L=256,d=0": 1.0}])
    assert list(niah) == [256, 1024] and niah[1024]["mean"] == 0.5
    with pytest.raises(ValueError, match="names no single length"):
        runner.length_curve([{"L=4,L=8": 1.0}])


def test_train_skips_non_finite_steps_and_keeps_training():
    """A NaN loss (step 2) or a NaN gradient (step 4) leaves the weights and AdamW's state as they
    were, is recorded as NaN and counted; the steps around it train as usual."""
    model = runner.small_model("transformer", 256, 32, 1, 2, seed=0)
    rng = random.Random(0)
    ex = [runner.Example([rng.randrange(256) for _ in range(8)], [rng.randrange(256) for _ in range(8)])
          for _ in range(4)]
    param = next(model.parameters())
    seen = {}

    def extra():
        step = len(seen)
        seen[step] = param.detach().clone()
        if step == 2:
            return torch.tensor(float("nan"))
        if step == 4:                                   # finite loss, non-finite gradient
            return _nan_grad(param)
        return torch.zeros(())

    losses = runner.train(model, lambda step: ex, 6, lr=1e-2, extra_loss=extra)
    assert [math.isfinite(v) for v in losses] == [True, True, False, True, False, True]
    assert runner.skipped_steps(losses) == 2 and runner.last_finite(losses) == losses[-1]
    assert torch.equal(seen[3], seen[2]) and torch.equal(seen[5], seen[4])      # skipped: unchanged
    assert not torch.equal(seen[2], seen[1]) and not torch.equal(seen[4], seen[3])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _nan_grad(p: torch.Tensor) -> torch.Tensor:
    """0 in the forward, NaN in the backward: sqrt at 0 has an infinite derivative, times 0."""
    return torch.sqrt(p.flatten()[0] * 0)


def test_collate_pads_rows_with_their_own_tokens_and_padding_never_changes_the_loss():
    """Rows are padded by repeating themselves (a long run of one pad token drove hope's projection
    memories to inf, docs/results.md); whatever the padding, the loss of a padded batch is the loss
    of its examples run one by one, for a causal attention model and for hope (float64)."""
    rng = random.Random(0)
    ex = [runner.Example.qa([rng.randrange(1, 30) for _ in range(n)], [rng.randrange(1, 30)] * 2) for n in (3, 9, 5)]
    idx, tgt = runner.collate(ex)
    assert idx.shape == (3, 10)
    assert idx[0].tolist() == (ex[0].tokens * 3)[:10]
    assert (tgt[0, len(ex[0].targets):] == runner.IGNORE).all()
    assert runner.collate(ex, pad=0)[0][0, len(ex[0].tokens):].eq(0).all()
    for name in ("transformer", "hope"):
        model = runner.small_model(name, 30, 16, 1, 2, seed=0).double()
        alone = [torch.nn.functional.cross_entropy(model(torch.tensor([e.tokens]))[0][0], torch.tensor(e.targets),
                                                   ignore_index=runner.IGNORE, reduction="sum") for e in ex]
        expected = sum(alone) / sum(sum(t != runner.IGNORE for t in e.targets) for e in ex)
        for pad in (None, 0):
            got = runner.answer_loss(model, *runner.collate(ex, pad=pad))
            assert abs(got.item() - expected.item()) < 1e-6   # answer_loss takes the loss in float32
