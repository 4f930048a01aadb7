"""The nested CMS variant (NL Eq. 72) and ad-hoc level stacking (NL §7.3), SPEC §5."""
from __future__ import annotations

import pytest
import torch

import hopelm
from hopelm.cli import main
from hopelm.config import ConfigError, ModelConfig, load_config
from hopelm.data import get_tokenizer
from hopelm.eval.levels import measure_levels
from hopelm.models import model_from_config, stack_levels
from hopelm.train.checkpoint import save_checkpoint
from tests.models.test_hope_attention import stream

V = 30
MIXERS = {"transformer": {}, "titans": {"momentum": 0.5, "chunk_size": 4}, "gated_deltanet": {"chunk_size": 4}}


def build(name="hope_attention", **kw):
    base = dict(name=name, vocab_size=V, d_model=32, n_layers=2, n_heads=2)
    if name == "hope_attention":
        base.update(cms_periods=[4, 8, 0], cms_lrs=[0.1, 0.05, 0.0], cms_variant="nested")
    torch.manual_seed(0)
    return model_from_config(ModelConfig(**{**base, **MIXERS.get(name, {}), **kw})).double()


def close(a, b, atol=1e-10):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# ---- nested variant ------------------------------------------------------------------------

@pytest.mark.parametrize("cuts, momentum", [([1], 0.0), ([7, 8, 9, 16, 17], 0.0), (list(range(1, 27)), 0.5)])
def test_nested_streaming_equals_one_call(cuts, momentum):
    m = build(cms_momentum=momentum)
    x = torch.randint(0, V, (2, 27))
    full = m(x)
    logits, state = stream(m, x, cuts)
    close(logits, full.logits)
    for a, b in zip(state.cms, full.state.cms):
        assert a.updates == b.updates == [6, 3, 0]
        for wa, wb in zip(a.delta + a.init, b.delta + b.init):
            assert (wa is None) == (wb is None)
            for n in wa or {}:
                close(wa[n], wb[n])


def test_nested_hope_streams_exactly():
    m = build("hope", chunk_size=2, projection_chunk_size=4, cms_periods=[4, 8], cms_lrs=[0.1, 0.05],
              cms_variant="nested", n_layers=1)
    x = torch.randint(0, V, (2, 19))
    close(stream(m, x, [1, 7, 8, 13])[0], m(x).logits)


def test_nested_restart_is_a_lookahead_step_toward_the_fast_weights():
    """Until the first slow boundary (token 8) nested = sequential; there the owner moves
    θ_init ← θ_init + ε(θ − θ_init), ε = η^(1)/η^(0) = 0.5, and level 0 restarts from it."""
    nested, seq = build(), build(cms_variant="sequential")
    x = torch.randint(0, V, (2, 9))
    a, b = nested(x), seq(x)                   # token 8 arrives: block [4, 8) is taught first
    close(a.logits[:, :8], b.logits[:, :8], atol=0)
    assert (a.logits[:, 8] - b.logits[:, 8]).abs().max() > 1e-8
    for blk_n, blk_s in zip(a.state.cms, b.state.cms):
        for n, theta in blk_s.delta[0].items():
            close(blk_n.init[1][n], 0.5 * theta)
            close(blk_n.delta[0][n], blk_n.init[1][n], atol=0)
        close(blk_n.delta[1]["up"], blk_s.delta[1]["up"], atol=0)   # the owner's own MLP learns as before


def test_nested_changes_land_at_each_levels_period():
    m = build()
    x = torch.randint(0, V, (1, 25))
    changes = {"delta0": [], "init1": [], "delta1": []}
    state, prev = None, None
    for t in range(25):
        state = m(x[:, t:t + 1], state=state).state
        c = state.cms[0]
        cur = {"delta0": c.delta[0]["up"], "init1": c.init[1]["up"], "delta1": c.delta[1]["up"]}
        for k in cur:
            if prev is not None and not torch.equal(cur[k], prev[k]):
                changes[k].append(t)
        prev = cur
    assert changes == {"delta0": [4, 8, 12, 16, 20, 24], "init1": [8, 16, 24], "delta1": [8, 16, 24]}
    rows = {r["component"]: r for r in measure_levels(m, x)}    # hopelm levels: real update counts
    assert rows["block 0: CMS level 0"]["updates"] == 6 and rows["block 0: CMS level 0"]["period"] == 4.0
    assert rows["block 0: CMS level 1"]["updates"] == 3 and rows["block 0: CMS level 1"]["period"] == 8.0
    assert rows["block 0: CMS level 2 (static)"]["frequency"] == 0.0


def test_nested_frozen_owner_resets_and_static_owner_owns_nothing():
    x = torch.randint(0, V, (2, 17))
    frozen = build(cms_lrs=[0.1, 0.0, 0.0])    # period 8, η = 0: θ_init stays θ_0, a periodic reset
    state = frozen(x).state.cms[0]
    assert state.init == [None, None, None] and state.updates == [4, 0, 0]
    assert all(not t.any() for t in state.delta[0].values())          # reset at token 16
    assert frozen(x[:, :15]).state.cms[0].delta[0]["up"].any()
    # A static slowest level (period 0) owns nothing: nested is then the sequential variant.
    two = dict(cms_periods=[4, 0], cms_lrs=[0.1, 0.0])
    close(build(**two)(x).logits, build(**two, cms_variant="sequential")(x).logits, atol=0)
    static = build(cms_lrs=[0.0, 0.0, 0.0])
    close(static(x).logits, build(cms_lrs=[0.0, 0.0, 0.0], cms_variant="sequential")(x).logits, atol=0)


@pytest.mark.parametrize("meta", ["first_order", "exact"])
def test_nested_every_parameter_gets_gradient(meta):
    m = build(n_layers=1, cms_meta_grad=meta)
    x = torch.randint(0, V, (2, 18))
    m(x, x).loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("periods", [[8, 4], [4, 6], [4, 4], [0, 4], [4, 0, 8]])
def test_nested_bad_periods_are_rejected(periods):
    with pytest.raises(ConfigError, match="model.cms_periods.*nested"):
        ModelConfig(cms_periods=periods, cms_lrs=[0.1] * len(periods), cms_variant="nested").validate()
    ModelConfig(cms_periods=periods, cms_lrs=[0.0] * len(periods), cms_variant="sequential").validate()


# ---- ad-hoc level stacking -----------------------------------------------------------------

@pytest.mark.parametrize("name, variant", [("transformer", "sequential"), ("transformer", "nested"),
                                           ("transformer", "independent"), ("titans", "sequential"),
                                           ("gated_deltanet", "nested")])
def test_stacking_with_zero_rates_reproduces_the_original(name, variant):
    m = build(name)
    x = torch.randint(0, V, (2, 19))
    stacked = stack_levels(m, [4, 8, 0], [0.0, 0.0, 0.0], variant)
    assert stacked.cfg.name == {"transformer": "hope_attention"}.get(name, name + "_cms")
    assert stacked.embed.weight.dtype == torch.float64
    close(stacked(x).logits, m(x).logits)
    # Online levels start from the same weights: identical until the first update (token 4).
    online = stack_levels(m, [4, 8, 0], [0.1, 0.05, 0.0], variant)
    logits, base = online(x).logits, m(x).logits
    close(logits[:, :4], base[:, :4])
    assert (logits[:, 4:] - base[:, 4:]).abs().max() > 1e-6


def test_stacking_keeps_the_pretrained_mlp_in_one_level():
    m = build("transformer")
    s = stack_levels(m, [4, 8], [0.1, 0.05], pretrained_level=0)
    ffn, cms = m.blocks[1].ffn, s.blocks[1].ffn
    assert torch.equal(cms.levels[0].down.weight, ffn.down.weight) and not cms.levels[1].down.weight.any()
    assert torch.equal(cms.levels[1].up.weight, ffn.up.weight)
    assert torch.equal(cms.norms[1].weight, m.blocks[1].norm2.weight)
    kept = s.state_dict()
    assert all(torch.equal(kept[k], t) for k, t in m.state_dict().items() if ".ffn." not in k and ".norm2." not in k)
    with pytest.raises(ConfigError, match="cannot be stacked"):
        stack_levels(s, [4], [0.1])
    with pytest.raises(ConfigError, match="headwise"):
        stack_levels(m, [4, 8], [0.1, 0.05], "headwise")
    with pytest.raises(ConfigError, match="multiple of the smallest"):
        stack_levels(m, [4, 6], [0.1, 0.05])


def test_stack_command_writes_a_checkpoint_that_loads_samples_and_fine_tunes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOPELM_CACHE", str(tmp_path / "token-cache"))
    cfg = load_config("tiny", overrides={"model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2,
                                         "model.vocab_size": 256, "data.seq_len": 32, "train.batch_size": 2,
                                         "train.eval_batches": 1, "train.progress": False,
                                         "train.tensorboard": False, "optim.warmup_steps": 1})
    torch.manual_seed(0)
    src = model_from_config(cfg.model)
    save_checkpoint(tmp_path / "src", model=src, optimizer=None, config=cfg.to_dict(),
                    meta={"step": 7, "tokenizer": get_tokenizer("bytes").to_dict()})
    x = torch.randint(0, 256, (2, 40))
    for lrs in ("0,0,0", "1e-2,5e-3,0"):
        out = tmp_path / f"stacked-{lrs}"
        main(["stack", str(tmp_path / "src"), "--out", str(out), "--cms-periods", "16,32,0", "--cms-lrs", lrs,
              "--cms-variant", "nested", "--train.max_steps=2"])
        assert "hope_attention" in capsys.readouterr().out
        loaded, tok = hopelm.load(out)
        assert loaded.cfg.cms_variant == "nested" and loaded.run_config.train.out_dir == str(out)
        expected = stack_levels(src.eval(), [16, 32, 0], [float(v) for v in lrs.split(",")], "nested")
        close(loaded(x).logits, expected(x).logits, atol=0)
        if lrs == "0,0,0":
            close(loaded(x).logits, src(x).logits, atol=1e-6)
    main(["sample", str(out), "--prompt", "KING", "--max-new-tokens", "20"])
    assert capsys.readouterr().out.startswith("KING")
    main(["train", "--resume", str(out)])                           # fine-tuning continues in `out`
    assert (out / "final").is_dir() and hopelm.load(out)[0].cfg.name == "hope_attention"
    with pytest.raises(SystemExit):
        main(["stack", str(tmp_path / "src"), "--out", str(out), "--cms-periods", "16", "--cms-lrs", "0"])
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_exact_meta_gradient_flows_through_hope_mixers():
    """With cms_meta_grad="exact" the inner gradient of layer 1's CMS passes through layer 2's
    self-modifying mixer with create_graph, so the outer backward differentiates the mixer twice
    (ops/memory.py silu_grad's second derivative); every parameter still gets a gradient."""
    kw = dict(n_layers=2, cms_periods=[4, 0], cms_lrs=[0.1, 0.0], chunk_size=2, projection_chunk_size=4)
    x = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))
    grads = {}
    for meta in ("first_order", "exact"):
        m = build("hope", cms_meta_grad=meta, **kw)
        m(x, x).loss.backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (meta, name)
        grads[meta] = m.blocks[0].mixer.proj_init.W1.grad
    assert (grads["exact"] - grads["first_order"]).abs().max() > 1e-8
