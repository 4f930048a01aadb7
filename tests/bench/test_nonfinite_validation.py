"""benchmarks/nonfinite_validation.py, whose trace docs/results.md quotes ("Raw values with bounded reads")."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import hopelm

spec = importlib.util.spec_from_file_location(
    "nonfinite_validation", Path(__file__).parents[2] / "benchmarks" / "nonfinite_validation.py")
nonfinite_validation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nonfinite_validation)


def test_mixer_trace_covers_every_block_and_token_and_reports_raw_values_per_chunk():
    torch.manual_seed(0)
    # online CMS levels with period 16: the mixers are called once per block of 16 tokens
    model = hopelm.build_model("hope", preset="tiny", vocab_size=256, d_model=32, n_layers=2, n_heads=2,
                               cms_periods=[16, 0], cms_lrs=[1e-3, 0.0], projection_chunk_size=16, chunk_size=16).eval()
    idx = torch.randint(0, 256, (2, 40))
    ins, outs = nonfinite_validation.mixer_inputs(model, idx)
    assert [t.shape for t in ins + outs] == [torch.Size([2, 40, 32])] * 4
    y, _ = model.blocks[0].mixer(ins[0])                     # one call on the joined input: the same output
    torch.testing.assert_close(y, outs[0])
    mixer = model.blocks[1].mixer
    assert mixer.opts.normalize_v
    norms = nonfinite_validation.value_norms(mixer, ins[1][:1])
    assert len(norms) == 3                                   # chunks of 16, 16 and 8 tokens
    assert all(n > 0 and abs(n - 1.0) > 1e-3 for n in norms)  # v as generated, not unit-normalised
    assert mixer.opts.normalize_v                            # and the option is restored
