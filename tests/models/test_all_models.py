"""Invariants every registry model keeps (SPEC §6): exact streaming, causality, per-sequence
independence, gradients everywhere, ablations that change the computation, checkpoints."""
from __future__ import annotations

import pytest
import torch

from hopelm.config import ModelConfig
from hopelm.models import list_models, model_from_config

# Small float64 configurations; hope models with online CMS levels (periods 4 and 8).
CONFIGS = {
    "transformer": {},
    "hope_attention": {"cms_periods": [4, 8, 0], "cms_lrs": [0.1, 0.05, 0.0]},
    "hope": {"chunk_size": 2, "projection_chunk_size": 4, "cms_periods": [4, 8], "cms_lrs": [0.1, 0.05]},
    "titans": {"momentum": 0.5, "chunk_size": 4},
    "gated_deltanet": {"chunk_size": 4},
}


def build(name: str, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, vocab_size=30, d_model=16, n_layers=2, n_heads=2, **{**CONFIGS[name], **kw})
    return model_from_config(cfg).double()


def test_every_registered_model_is_covered():
    assert set(list_models()) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_full_forward_equals_prefix_then_token_by_token(name):
    _assert_streams_exactly(build(name))


@pytest.mark.parametrize("flag", [{"self_target": False}, {"projection_writes": False}, {"projection_rate": 0.1}])
def test_hope_ablations_stream_exactly(flag):
    # Frozen projection memories never advance their chunk position: reads must still not
    # depend on where a stream is cut.
    _assert_streams_exactly(build("hope", **flag))


def _assert_streams_exactly(m):
    x = torch.randint(0, 30, (2, 19))
    full = m(x)
    for prefix in (1, 7):   # 7: not a chunk, projection-chunk or CMS-period boundary
        out = m(x[:, :prefix])
        logits, state = [out.logits], out.state
        out = m(x[:, prefix:prefix + 5], state=state)       # a multi-token piece mid-stream
        logits.append(out.logits)
        state = out.state
        for t in range(prefix + 5, 19):
            out = m(x[:, t:t + 1], state=state)
            logits.append(out.logits)
            state = out.state
        torch.testing.assert_close(torch.cat(logits, 1), full.logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_causality_and_independence(name):
    m = build(name)
    x = torch.randint(0, 30, (2, 17))
    base = m(x).logits
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % 30
    changed = m(y).logits
    torch.testing.assert_close(changed[:, :9], base[:, :9], rtol=0, atol=0)
    assert (changed[:, 9:] - base[:, 9:]).abs().max() > 0
    z = x.clone()
    z[1] = torch.randint(0, 30, (17,))
    torch.testing.assert_close(m(z).logits[0], base[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_parameter_receives_gradient(name):
    m = build(name)
    x = torch.randint(0, 30, (2, 17))
    m(x, x).loss.backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead


@pytest.mark.parametrize("flag", [
    {"precondition": False},            # NL Table 6: w/o DGD
    {"momentum": 0.5},                  # momentum on (the default hope has none; Table 6 removes it)
    {"retention": False},               # w/o weight decay: α fixed at 1
    {"cms_lrs": [0.0, 0.0]},            # w/o CMS in-context learning: static MLP levels
    {"cms_variant": "nested"},          # NL Eq. 72: the period-8 level restarts the period-4 one
    {"self_modifying": False},          # static k / v / η / α projections
    {"adaptive_q": True},               # q from a memory
    {"objective": "dot"},
    {"read_after_write": True},
    {"normalize_v": False},             # raw self-generated values (the literal SPEC §3 rule)
    {"self_target": False},             # M_memory learns v̂ = v instead of M_memory(v)
    {"projection_writes": False},       # projection memories frozen at M_□,0
    {"projection_rate": 0.1},           # projection memories on a 10x slower clock
    {"detach_inner": True},
])
def test_each_ablation_changes_the_computation(flag):
    base = build("hope")
    ablated = build("hope", **flag)
    x = torch.randint(0, 30, (2, 17))
    if flag.get("detach_inner"):   # same forward, different outer gradient
        grads = []
        for m in (base, ablated):
            m(x, x).loss.backward()
            grads.append(m.blocks[0].mixer.mem_init.W2.grad)
        assert (grads[0] - grads[1]).abs().max() > 1e-8
        return
    shared = {k: v for k, v in base.state_dict().items() if k in ablated.state_dict()
              and ablated.state_dict()[k].shape == v.shape}
    ablated.load_state_dict(shared, strict=False)
    assert (ablated(x).logits - base(x).logits).abs().max() > 1e-6


def test_checkpoint_round_trip_reproduces_hope_logits(tmp_path):
    from hopelm.train.checkpoint import load_checkpoint, save_checkpoint
    m = build("hope")
    x = torch.randint(0, 30, (2, 17))
    save_checkpoint(tmp_path / "c", model=m, optimizer=None, config={}, meta={})
    fresh = build("hope")
    torch.manual_seed(1)
    for p in fresh.parameters():
        p.data.normal_()
    fresh.load_state_dict(load_checkpoint(tmp_path / "c").model_state)
    torch.testing.assert_close(fresh(x).logits, m(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["hope", "hope_attention"])
def test_online_cms_without_autograd_equals_with_it(name):
    """Under no_grad a block taught within the call runs with a graph that _teach reuses (no
    recomputation); the logits and fast weights equal the autograd-on call and a stream fed in
    pieces, and nothing returned is attached to a graph."""
    m = build(name)
    x = torch.randint(0, 30, (2, 19))
    ref = m(x)
    with torch.no_grad():
        full = m(x)
        pieces, state = [], None
        for a, b in ((0, 6), (6, 7), (7, 19)):
            out = m(x[:, a:b], state=state)
            pieces.append(out.logits)
            state = out.state
    torch.testing.assert_close(full.logits, ref.logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cat(pieces, 1), ref.logits, rtol=0, atol=1e-10)
    for st in (full.state, state):
        for a, b in zip(st.cms, ref.state.cms):
            for da, db in zip(a.delta, b.delta):
                for n in da or {}:
                    torch.testing.assert_close(da[n], db[n], rtol=0, atol=1e-10)
    assert full.logits.grad_fn is None
    leaves = [full.state]
    while leaves:
        obj = leaves.pop()
        if isinstance(obj, torch.Tensor):
            assert obj.grad_fn is None and not obj.requires_grad
        elif isinstance(obj, (list, tuple)):
            leaves.extend(obj)
        elif hasattr(obj, "__dataclass_fields__"):
            leaves.extend(getattr(obj, f) for f in obj.__dataclass_fields__)
        elif isinstance(obj, dict):
            leaves.extend(obj.values())


@pytest.mark.parametrize("name", ["hope", "hope_attention"])
def test_online_cms_streamed_with_autograd_has_the_same_gradients(name):
    """With autograd on, a stream fed in pieces that start mid-block (the 4-token CMS block of
    these configs) gives the same parameter gradients as one call (first-order inner steps)."""
    x = torch.randint(0, 30, (2, 19))
    w = torch.randn(2, 19, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for cuts in ([], [6, 7, 13]):
        m = build(name)
        outs, state, start = [], None, 0
        for end in [*cuts, 19]:
            out = m(x[:, start:end], state=state)
            outs.append(out.logits)
            state, start = out.state, end
        (torch.cat(outs, 1) * w).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=1e-9, msg=n)
