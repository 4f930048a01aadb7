from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hopelm.train import trainer
from hopelm.train.checkpoint import load_checkpoint
from hopelm.train.diagnose import trace_non_finite
from tests.train.conftest import SMALL


def run(tmp_path: Path, *extra: str, name: str = "run", resume: str | None = None) -> dict:
    overrides = SMALL + [f"--train.out_dir={tmp_path / name}", *extra]
    cfg, tok, ckpt = trainer.prepare_run("tiny", None, overrides, resume)
    return trainer.train(cfg, tok, ckpt)


def test_thirty_steps_lower_the_loss(tmp_path):
    out = run(tmp_path, "--train.max_steps=30", "--train.eval_interval=0")
    losses = [out["losses"][s] for s in range(30)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5   # from ~ln(256)=5.5 towards ~3
    assert out["metrics"]["val_loss"] < 5.0
    assert (tmp_path / "run" / "final" / "manifest.json").is_file()
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "val"}


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    full = run(tmp_path, "--train.max_steps=12", "--checkpoint.interval=6", "--train.eval_interval=0", name="full")
    resumed = run(tmp_path, "--train.out_dir=" + str(tmp_path / "resumed"), name="full",
                  resume=str(tmp_path / "full" / "step_000006"))
    assert sorted(resumed["losses"]) == list(range(6, 12))
    for step in range(6, 12):
        assert resumed["losses"][step] == full["losses"][step]   # bit-identical, not approximately
    a = load_checkpoint(tmp_path / "full" / "final").model_state
    b = load_checkpoint(tmp_path / "resumed" / "final").model_state
    assert all(torch.equal(a[k], b[k]) for k in a)


def poison(monkeypatch, bad_calls, kind: str = "loss") -> None:
    """Make the model's training loss NaN on the forward calls whose number is in `bad_calls`
    (kind "grad": keep the loss finite and make the gradient NaN, through a log(0) branch that
    torch.where does not select but whose backward still computes 0 / 0)."""
    build = trainer.model_from_config
    calls = {"n": 0}

    def poisoned(cfg):
        model = build(cfg)
        forward = model.forward

        def fwd(idx, targets=None, state=None):
            out = forward(idx, targets, state)
            calls["n"] += 1
            if targets is not None and calls["n"] in bad_calls:
                if kind == "grad":
                    w = model.embed.weight[0, 0]
                    return out._replace(loss=out.loss + 0 * torch.where(torch.tensor(True), w, torch.log(w - w)))
                return out._replace(loss=out.loss * float("nan"))
            return out
        model.forward = fwd
        return model
    monkeypatch.setattr(trainer, "model_from_config", poisoned)


def test_non_finite_loss_skips_the_step(tmp_path, monkeypatch, capsys):
    poison(monkeypatch, {3})
    out = run(tmp_path, "--train.max_steps=5", "--train.eval_interval=0")
    assert out["skipped_steps"] == 1 and np.isnan(out["losses"][2])
    assert np.isfinite(out["metrics"]["val_loss"])
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "non-finite gradients in" in err and "embed.weight" in err


@pytest.mark.parametrize("kind", ["grad", "loss"])
def test_trace_nonfinite_names_the_operation_that_made_the_nan(tmp_path, monkeypatch, capsys, kind):
    poison(monkeypatch, {3, 4}, kind)       # call 4 is the trace's re-run of step 2's batch
    out = run(tmp_path, "--train.max_steps=4", "--train.eval_interval=0", "--train.trace_nonfinite=true")
    assert out["skipped_steps"] == 1 and np.isfinite(out["losses"][3])
    err = capsys.readouterr().err
    assert "Trace of the non-finite step" in err
    if kind == "grad":   # finite forward, NaN made by the log's backward, traced to its line
        assert np.isfinite(out["losses"][2])
        assert "(non-finite gradients in 1 parameter, first embed.weight)" in err   # clipping did not spread it
        assert "every module's output was finite" in err and "'LogBackward0' returned nan" in err
        assert "test_trainer.py:" in err and "torch.log(w - w)" in err
    else:
        assert "first non-finite output came from the model's output" in err and "returned nan" in err


def test_trace_names_our_line_when_the_nan_is_made_inside_torch():
    """`1.0 / x` is recorded by anomaly mode at torch/_tensor.py (__rtruediv__); the trace names the
    caller's line too, the frame that says which division it was (the bound of hope's memories)."""
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((3,), 1e-20))

        def forward(self, x, y):
            scale = (1.0 / self.w.clamp_min(1e-30)).clamp(max=1.0)   # the old bound's form
            return SimpleNamespace(loss=(scale * x).sum())

    msg = trace_non_finite(Scaled(), [(torch.ones(3), None)], contextlib.nullcontext)
    assert "'ReciprocalBackward0' returned nan" in msg
    assert "test_trainer.py:" in msg and "(1.0 / self.w.clamp_min(1e-30))" in msg
    assert "(inside torch: " in msg and "_tensor.py:" in msg


def test_training_that_keeps_diverging_stops_with_one_sentence(tmp_path, monkeypatch):
    poison(monkeypatch, set(range(3, 100)))
    with pytest.raises(trainer.TrainingDiverged, match=f"{trainer.MAX_SKIPS_IN_A_ROW} steps in a row"):
        run(tmp_path, "--train.max_steps=30", "--train.eval_interval=0")


def test_cuda_graph_on_the_cpu_is_refused_in_one_sentence(tmp_path):
    from hopelm.config import ConfigError
    with pytest.raises(ConfigError, match=r"train.cuda_graph=true needs one process on a CUDA device; this run has 1 process\(es\) on cpu."):
        run(tmp_path, "--train.cuda_graph=true", "--train.device=cpu")
    assert not (tmp_path / "run").exists()


def test_bad_corpora_fail_before_compute(tmp_path):
    from hopelm.data import DataError
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    short = tmp_path / "short.txt"
    short.write_text("only a few words\n")
    for path in (empty, binary, short, tmp_path / "missing.txt"):
        with pytest.raises(DataError, match=str(path.name)):
            run(tmp_path, f"--data.path={path}", "--train.max_steps=1")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("model", [
    [],
    # hope with online CMS levels: the inner autograd.grad of each block runs inside DDP's forward
    ["--model.name=hope", "--model.cms_periods=[16,32,0]", "--model.cms_lrs=[1e-3,5e-4,0.0]",
     "--model.chunk_size=8", "--model.projection_chunk_size=16"],
], ids=["transformer", "hope"])
def test_torchrun_two_processes_equal_one_process(tmp_path, model):
    common = SMALL + model + ["--train.max_steps=6", "--train.eval_interval=0", "--train.dtype=float64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = [sys.executable, "-m", "hopelm", "train", *common, f"--train.out_dir={tmp_path / 'one'}"]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "hopelm", "train", *common, f"--train.out_dir={tmp_path / 'two'}"]
    for cmd in (single, ddp):
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    a = load_checkpoint(tmp_path / "one" / "final")
    b = load_checkpoint(tmp_path / "two" / "final")
    for k in a.model_state:
        torch.testing.assert_close(a.model_state[k], b.model_state[k], rtol=1e-9, atol=1e-11)
    assert abs(a.meta["metrics"]["val_loss"] - b.meta["metrics"]["val_loss"]) < 1e-9


@pytest.mark.slow  # inductor compiles the mixers: minutes on a 2-core CPU
def test_compiled_mixers_train_like_eager_mixers(tmp_path):
    from torch._dynamo.utils import counters
    args = ("--model.name=hope", "--train.max_steps=3", "--train.eval_interval=0", "--data.seq_len=256")
    eager = run(tmp_path, *args, name="eager")
    counters.clear()
    compiled = run(tmp_path, *args, "--train.compile_mixers=true", name="compiled")
    assert counters["stats"]["unique_graphs"] >= 1                # the mixers did run compiled
    for step in range(3):
        assert compiled["losses"][step] == pytest.approx(eager["losses"][step], rel=1e-4)
