"""Checkpoint round trips, exact resume, RNG states, corruption detection, atomicity, run layout."""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import hopelm.train.checkpoint as ckpt_mod
from hopelm.train.checkpoint import (
    CheckpointError,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)

V, D = 13, 8


class TiedLM(nn.Module):
    """A tiny LM whose output head shares its weight with the embedding (one Parameter, two names)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.mix = nn.Linear(D, D)
        self.norm = nn.LayerNorm(D)
        self.drop = nn.Dropout(0.1)  # consumes the torch RNG, so resume must restore it
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.tanh(self.mix(self.emb(idx)))) * self.scale  # [B, T, D]
        return self.head(self.norm(h))  # [B, T, V]


def make(seed: int = 0) -> tuple[TiedLM, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TiedLM().double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True)
    return model, opt


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    """n steps whose batches come from the global torch RNG (so RNG restore is part of the test)."""
    model.train()
    for _ in range(n):
        idx = torch.randint(0, V, (4, 6))
        logits = model(idx)
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), idx[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def assert_same(a, b, where: str = "") -> None:
    """Bit-for-bit equality of nested state, including types (tuple vs list) and dtypes."""
    if isinstance(a, dict):  # Module.state_dict() is an OrderedDict; any dict will do
        assert isinstance(b, dict), where
    else:
        assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


META = {"step": 3, "data_position": {"seed": 0, "next_step": 3}, "tokenizer": {"kind": "bytes"},
        "metrics": {"val_loss": 2.5}}
CONFIG = {"model": {"d_model": D}, "train": {"max_steps": 10}}


def saved_run(tmp_path: Path, name: str = "step_000003") -> tuple[Path, TiedLM, torch.optim.Optimizer]:
    model, opt = make()
    train_steps(model, opt, 3)
    path = save_checkpoint(tmp_path / name, model=model, optimizer=opt, config=CONFIG, meta=META)
    return path, model, opt


# ---------------------------------------------------------------------------------------------
# round trip and exact resume


def test_round_trip_is_bit_exact(tmp_path):
    path, model, opt = saved_run(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "rng.json",
         "config.json", "meta.json", "manifest.json"])
    ck = load_checkpoint(path)
    assert_same(ck.model_state, model.state_dict(), "model")
    assert_same(ck.optimizer_state, opt.state_dict(), "optimizer")
    assert ck.config == CONFIG and ck.meta == META
    # The tied weight is stored once and comes back as one tensor under both names.
    assert ck.model_state["head.weight"] is ck.model_state["emb.weight"]
    assert ck.model_state._metadata == model.state_dict()._metadata  # per-module versions kept
    fresh, fresh_opt = make(seed=1)
    fresh.load_state_dict(ck.model_state, strict=True)
    fresh_opt.load_state_dict(ck.optimizer_state)
    assert fresh.head.weight is fresh.emb.weight
    assert_same(fresh_opt.state_dict(), opt.state_dict(), "reloaded optimizer")
    # Optimizer tensors use the documented key scheme.
    from safetensors import safe_open
    with safe_open(str(path / "optimizer.safetensors"), "pt") as f:
        assert "state.0.exp_avg" in set(f.keys())


def test_resume_continues_exactly(tmp_path):
    """Save after 3 steps, reload into fresh objects: 4 more steps give the uninterrupted parameters."""
    model, opt = make()
    train_steps(model, opt, 3)
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, config=CONFIG, meta=META)
    train_steps(model, opt, 4)  # the uninterrupted run
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(1234)
    np.random.seed(1234)  # scramble the RNGs: the checkpoint must bring them back
    ck = load_checkpoint(path)
    resumed, resumed_opt = make(seed=99)
    resumed.load_state_dict(ck.model_state, strict=True)
    resumed_opt.load_state_dict(ck.optimizer_state)
    restore_rng(ck.rng)
    train_steps(resumed, resumed_opt, 4)
    assert_same(resumed.state_dict(), expected, "resumed")


def test_without_optimizer_and_with_wrapped_model(tmp_path):
    model, _ = make()
    compiled_like = nn.Module()
    compiled_like._orig_mod = model  # what torch.compile's OptimizedModule looks like
    path = save_checkpoint(tmp_path / "ck", model=compiled_like, optimizer=None, config={}, meta={"step": 0})
    ck = load_checkpoint(path)
    assert ck.optimizer_state is None
    assert not (path / "optimizer.json").exists()
    assert_same(ck.model_state, model.state_dict())


def test_fresh_optimizer_and_scalar_state(tmp_path):
    """An optimizer with no state yet, and one whose state holds Python scalars, both round-trip."""
    model, _ = make()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ck = load_checkpoint(save_checkpoint(tmp_path / "a", model=model, optimizer=sgd, config={}, meta={}))
    assert_same(ck.optimizer_state, sgd.state_dict())
    adam = torch.optim.Adam(model.parameters())
    state = adam.state_dict()
    for p in model.parameters():
        adam.state[p] = {"step": 7, "ratio": 0.25, "buf": torch.ones(2)}
    state = adam.state_dict()
    ck = load_checkpoint(save_checkpoint(tmp_path / "b", model=model, optimizer=adam, config={}, meta={}))
    assert_same(ck.optimizer_state, state)


def test_load_never_unpickles(tmp_path, monkeypatch):
    path, _, _ = saved_run(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("load_checkpoint must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_checkpoint(path)


def test_unserialisable_meta_is_a_clear_error(tmp_path):
    model, opt = make()
    with pytest.raises(CheckpointError, match=r"Cannot save checkpoint .*ck.*metadata"):
        save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, config={}, meta={"bad": object()})
    assert list(tmp_path.iterdir()) == []  # nothing left behind


# ---------------------------------------------------------------------------------------------
# RNG


def draws() -> tuple:
    return torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], random.gauss(0, 1)


def test_rng_capture_restore_reproduces_draws():
    random.gauss(0, 1)  # leaves a cached gauss_next in python's state
    state = capture_rng()
    first = draws()
    restore_rng(state)
    second = draws()
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2:] == second[2:]


def test_rng_survives_the_checkpoint(tmp_path):
    model, _ = make()
    np.random.standard_normal()  # sets numpy's cached gauss
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=None, config={}, meta={})  # rng=None: now
    first = draws()
    restore_rng(load_checkpoint(path).rng)
    second = draws()
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2:] == second[2:]


# ---------------------------------------------------------------------------------------------
# corruption


def test_truncated_file(tmp_path):
    path, _, _ = saved_run(tmp_path)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"corrupted: model\.safetensors has \d+ bytes .*truncated") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_altered_byte(tmp_path):
    path, _, _ = saved_run(tmp_path)
    f = path / "optimizer.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupted: optimizer\.safetensors has sha256 .*altered") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_missing_file(tmp_path):
    path, _, _ = saved_run(tmp_path)
    (path / "rng.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: rng\.safetensors is listed in the manifest but missing"):
        load_checkpoint(path)


def test_missing_manifest(tmp_path):
    path, _, _ = saved_run(tmp_path)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no manifest\.json") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_garbled_manifest_and_json(tmp_path):
    path, _, _ = saved_run(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    # A meta.json that is not JSON but matches a (rewritten) manifest: the JSON parse must catch it.
    (path / "meta.json").write_text("{not json")
    manifest["files"]["meta.json"] = {"size": 9, "sha256": ckpt_mod._sha256(path / "meta.json")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"corrupted: meta\.json is not valid JSON"):
        load_checkpoint(path)
    (path / "manifest.json").write_text('{"format": ')
    with pytest.raises(CheckpointError, match=r"corrupted: manifest\.json is not valid JSON"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# atomicity


def test_failure_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path, model, opt = saved_run(tmp_path, "ck")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    train_steps(model, opt, 2)

    real = ckpt_mod._save_tensors

    def crash_on_optimizer(p, *args):
        real(p, *args)
        if p.name == "optimizer.safetensors":  # written, then die before the rest: a half-written temp dir
            raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "_save_tensors", crash_on_optimizer)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, optimizer=opt, config=CONFIG, meta={**META, "step": 5})
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "new", model=model, optimizer=opt, config=CONFIG, meta=META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dir, no half-written "new"
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert load_checkpoint(path).meta["step"] == 3


def test_failure_during_swap_restores_previous(tmp_path, monkeypatch):
    path, model, opt = saved_run(tmp_path, "ck")
    real_replace = os.replace

    def failing_replace(src, dst):
        if ".tmp-" in Path(src).name:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, model=model, optimizer=opt, config=CONFIG, meta={**META, "step": 9})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert load_checkpoint(path).meta["step"] == 3


def test_overwrite_replaces_atomically(tmp_path):
    path, model, opt = saved_run(tmp_path, "final")
    save_checkpoint(path, model=model, optimizer=opt, config=CONFIG, meta={**META, "step": 4})
    assert load_checkpoint(path).meta["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


# ---------------------------------------------------------------------------------------------
# run-directory layout


def small_save(path: Path, step: int) -> Path:
    model = nn.Linear(2, 2)
    return save_checkpoint(path, model=model, optimizer=None, config={}, meta={"step": step})


def test_latest_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert latest_checkpoint(run) is None
    run.mkdir()
    assert latest_checkpoint(run) is None
    for s in (10, 20, 30):
        small_save(run / f"step_{s:06d}", s)
    (run / "step_000040").mkdir()  # a stray directory without a manifest is ignored
    (run / "notes").mkdir()
    assert latest_checkpoint(run) == run / "step_000030"
    small_save(run / "final", 30)
    assert latest_checkpoint(run) == run / "final"  # final wins a tie
    shutil.rmtree(run / "final")
    f = run / "step_000030" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-4])  # a truncated newest checkpoint is skipped
    assert latest_checkpoint(run) == run / "step_000020"
    assert latest_checkpoint(run / "step_000010") == run / "step_000010"  # a checkpoint itself


def test_prune_checkpoints(tmp_path):
    for s in (1, 2, 3, 4, 5):
        small_save(tmp_path / f"step_{s:06d}", s)
    small_save(tmp_path / "final", 5)
    deleted = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == ["step_000001", "step_000002", "step_000003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "step_000004", "step_000005"]
    prune_checkpoints(tmp_path, keep_last=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep_last=-1)
