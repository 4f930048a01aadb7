"""HOPE-Attention: attention + Continuum Memory System with online in-context updates (SPEC §5)."""
from __future__ import annotations

import pytest
import torch

from hopelm.config import ModelConfig
from hopelm.models import model_from_config


def build(**kw):
    base = dict(name="hope_attention", vocab_size=30, d_model=16, n_layers=2, n_heads=2,
                cms_periods=[4, 8, 0], cms_lrs=[0.1, 0.05, 0.0])
    torch.manual_seed(0)
    return model_from_config(ModelConfig(**{**base, **kw})).double()


def stream(model, x, cuts):
    """Feed x in pieces ending at `cuts`, carrying the state; return the concatenated logits."""
    outs, state, start = [], None, 0
    for end in [*cuts, x.shape[1]]:
        out = model(x[:, start:end], state=state)
        outs.append(out.logits)
        state, start = out.state, end
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("variant, cuts", [
    ("sequential", [1]), ("sequential", [5]), ("sequential", [8, 9, 10, 11]),
    ("sequential", list(range(1, 27))),                       # prefix of 1, then token by token
    ("independent", [3, 11, 13, 14, 22]), ("headwise", [3, 11, 13, 14, 22]),
    ("nested", [3, 11, 13, 14, 22]),                           # more in test_cms_variants.py
])
def test_full_forward_equals_streaming(variant, cuts):
    m = build(cms_variant=variant, d_model=24 if variant == "headwise" else 16)  # 24: three channel groups
    x = torch.randint(0, 30, (2, 27))
    full = m(x)
    logits, state = stream(m, x, cuts)
    torch.testing.assert_close(logits, full.logits, rtol=0, atol=1e-10)
    for a, b in zip(state.cms, full.state.cms):
        for da, db in zip(a.delta, b.delta):
            if da is not None:
                for n in da:
                    torch.testing.assert_close(da[n], db[n], rtol=0, atol=1e-10)


def test_online_levels_change_the_computation_and_lr_zero_is_static():
    m = build()
    static = build(cms_lrs=[0.0, 0.0, 0.0])
    static.load_state_dict(m.state_dict())
    x = torch.randint(0, 30, (2, 27))
    online, frozen = m(x).logits, static(x).logits
    # The first block (4 tokens) runs with θ_0 in both; afterwards the fast weights differ.
    torch.testing.assert_close(online[:, :4], frozen[:, :4], rtol=0, atol=1e-12)
    assert (online[:, 4:] - frozen[:, 4:]).abs().max() > 1e-6


def test_fast_weights_change_exactly_at_period_multiples():
    m = build()
    x = torch.randint(0, 30, (1, 40))
    changes = {0: [], 1: []}
    state = None
    prev = None
    for t in range(40):
        state = m(x[:, t:t + 1], state=state).state
        cur = [state.cms[0].delta[i]["up"].clone() for i in (0, 1)]
        if prev is not None:
            for i in (0, 1):
                if not torch.equal(cur[i], prev[i]):
                    changes[i].append(t)   # the update lands when token t (a period boundary) arrives
        prev = cur
    assert changes[0] == [4, 8, 12, 16, 20, 24, 28, 32, 36]
    assert changes[1] == [8, 16, 24, 32]
    assert state.cms[0].updates == [9, 4, 0]   # measured frequency 9/36 = 1/4 and 4/32 = 1/8


def test_per_sequence_fast_weights_are_independent():
    m = build()
    x = torch.randint(0, 30, (2, 27))
    y = x.clone()
    y[1] = torch.randint(0, 30, (27,))
    a, b = m(x), m(y)
    torch.testing.assert_close(a.logits[0], b.logits[0], rtol=0, atol=0)
    assert not torch.allclose(a.logits[1], b.logits[1])


def test_causality():
    m = build()
    x = torch.randint(0, 30, (1, 27))
    base = m(x).logits
    for t in (3, 4, 9, 26):
        y = x.clone()
        y[0, t] = (y[0, t] + 1) % 30
        changed = m(y).logits
        torch.testing.assert_close(changed[:, :t], base[:, :t], rtol=0, atol=0)


@pytest.mark.parametrize("meta", ["first_order", "exact"])
def test_every_parameter_gets_gradient(meta):
    m = build(cms_meta_grad=meta, cms_momentum=0.5)
    x = torch.randint(0, 30, (2, 27))
    m(x, x).loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_exact_meta_gradient_differs_from_first_order():
    x = torch.randint(0, 30, (2, 27))
    grads = {}
    for meta in ("first_order", "exact"):
        m = build(cms_meta_grad=meta)
        m(x, x).loss.backward()
        grads[meta] = m.blocks[0].ffn.levels[0].up.weight.grad.clone()
    assert (grads["exact"] - grads["first_order"]).abs().max() > 1e-8


def test_generation_keeps_learning_in_context():
    m = build()
    out = m(torch.randint(0, 30, (1, 3)))
    tokens = m.generate(torch.randint(0, 30, (1, 3)), 20, temperature=0)
    assert tokens.shape == (1, 23)
    state = m(tokens).state
    assert state.cms[0].updates[0] == 5 and out.state.cms[0].updates[0] == 0


def test_bad_periods_are_rejected():
    from hopelm.config import ConfigError
    with pytest.raises(ConfigError, match="multiple of the smallest"):
        ModelConfig(cms_periods=[4, 6], cms_lrs=[0.1, 0.1]).validate()
    with pytest.raises(ConfigError, match="one rate per level"):
        ModelConfig(cms_periods=[4, 8], cms_lrs=[0.1]).validate()
