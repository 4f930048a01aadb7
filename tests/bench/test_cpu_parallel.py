"""benchmarks/cpu_parallel.py, whose figures docs/results.md quotes (threads against processes on a CPU)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location("cpu_parallel", Path(__file__).parents[2] / "benchmarks" / "cpu_parallel.py")
cpu_parallel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_parallel)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_every_way_is_timed_from_real_training_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPELM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cpu.json"
    tiny = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "data.seq_len=32", "train.batch_size=4"]
    argv = ["cpu_parallel.py", "transformer", "--procs", "2", "--log-interval", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv + [a for s in tiny for a in ("--set", s)])
    cpu_parallel.main()
    rows = json.loads(out.read_text())["rows"]
    assert [r["way"] for r in rows] == ["1 thread", "2 threads", "2 processes x 1 thread"]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert rows[0]["vs_one_thread"] == 1.0 and all(r["vs_first_model"] == 1.0 for r in rows)
