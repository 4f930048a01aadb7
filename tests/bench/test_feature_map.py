"""benchmarks/feature_map.py, whose figures docs/results.md quotes (M_memory's input-side weight along a haystack)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import hopelm
from hopelm.ops.memory import rms_row_norm

spec = importlib.util.spec_from_file_location("feature_map", Path(__file__).parents[2] / "benchmarks" / "feature_map.py")
feature_map = importlib.util.module_from_spec(spec)
spec.loader.exec_module(feature_map)


def _model(**over):
    torch.manual_seed(0)
    return hopelm.build_model("hope", preset="tiny", vocab_size=256, d_model=32, n_layers=2, n_heads=2,
                              self_modifying=False, eta_max=1.0, eta_init=0.5, objective="dot", **over).eval()


def test_trace_starts_at_the_initial_state_and_sees_the_preconditioner_shrink_w2():
    ids = torch.randint(0, 256, (1, 100))
    model = _model(alpha_init=[0.999999])
    rows = feature_map.trace(model, ids)
    C = model.cfg.chunk_size
    assert [(r["block"], r["pos"]) for r in rows] == [(b, p) for p in range(0, 100, C) for b in range(2)]
    for b in range(2):
        init = model.blocks[b].mixer.mem_init
        assert rows[b]["W2"] == rms_row_norm(init.W2).tolist() and rows[b]["W1"] == rms_row_norm(init.W1).tolist()
    # With DGD at η = 0.5 every token shrinks W2 along its key (α − η); without the preconditioner
    # and with α ≈ 1 only the small gradient term moves it.
    last = {b: [r for r in rows if r["block"] == b][-1] for b in range(2)}
    assert all(last[b]["W2"][h] < 0.9 * rows[b]["W2"][h] for b in range(2) for h in range(2))
    plain = feature_map.trace(_model(alpha_init=[0.999999], precondition=False), ids)
    last = {b: [r for r in plain if r["block"] == b][-1] for b in range(2)}
    assert all(abs(last[b]["W2"][h] / plain[b]["W2"][h] - 1) < 0.05 for b in range(2) for h in range(2))


def test_overrides_parse_like_the_eval_runners_set():
    assert feature_map.parse_sets(["eta_max=1.0", "alpha_init=[0.5,0.999]", "objective=dot", "precondition=false"]) == \
        {"eta_max": 1.0, "alpha_init": [0.5, 0.999], "objective": "dot", "precondition": False}


def test_mean_cosine_is_one_for_equal_features_and_zero_for_orthogonal_ones():
    same = torch.randn(1, 2, 5).expand(6, 2, 5)                        # [T, H, n]: every position alike
    assert torch.allclose(torch.tensor(feature_map.mean_cosine(same)), torch.ones(2), atol=1e-6)
    eye = torch.eye(5).unsqueeze(1).expand(5, 2, 5)                     # distinct one-hot features
    assert feature_map.mean_cosine(eye) == [0.0, 0.0]


class _ConstantKeys(torch.nn.Module):
    def forward(self, x):
        return torch.ones_like(x)


def test_key_overlap_reads_the_keys_the_mixer_writes():
    ids = torch.randint(0, 256, (1, 40))
    rows = feature_map.key_overlap(_model(), ids)
    assert [sorted(r) for r in rows] == [["block", "k", "silu_W2k"]] * 2
    linear = feature_map.key_overlap(_model(memory_arch="linear"), ids)
    assert [sorted(r) for r in linear] == [["block", "k"]] * 2
    # the keys it measures are the mixer's own: equal keys in every position give cosine 1
    model = _model()
    for b in model.blocks:
        b.mixer.k = _ConstantKeys()
    assert all(abs(c - 1) < 1e-5 for r in feature_map.key_overlap(model, ids) for c in r["k"] + r["silu_W2k"])
    # With online CMS levels the model runs in blocks of cms_block tokens, one mixer call each: every
    # call's keys count. Block 0's keys come before any CMS level, so the same weights with static
    # levels (one call) must give the same overlap.
    ids = torch.randint(0, 256, (1, 300))
    online = _model()
    assert online.cms_block and online.cms_block < ids.shape[1]
    static = _model(cms_lrs=[0.0, 0.0, 0.0])
    static.load_state_dict(online.state_dict())
    assert not static.cms_block
    got, want = feature_map.key_overlap(online, ids)[0], feature_map.key_overlap(static, ids)[0]
    assert torch.allclose(torch.tensor(got["k"] + got["silu_W2k"]), torch.tensor(want["k"] + want["silu_W2k"]), atol=1e-6)
    with pytest.raises(ValueError, match="static projections"):
        feature_map.key_overlap(hopelm.build_model("hope", preset="tiny", vocab_size=256, d_model=32, n_layers=1, n_heads=2), ids)
