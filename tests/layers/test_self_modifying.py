"""The self-modifying mixer's initialisation: the projection memories' initial states and the gates."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hopelm.layers.self_modifying import MemoryOptions, SelfModifyingMemory, head_retentions


def _kv_cosine(std: float, arch: str = "mlp") -> float:
    """Mean cosine of the generated k_t and v_t of a fresh mixer on random inputs."""
    torch.manual_seed(0)
    layer = SelfModifyingMemory(64, 2, MemoryOptions(memory_arch=arch, proj_init_std=std)).double()
    xt = torch.randn(2, 32, 2, 32, dtype=torch.float64)
    k, v, *_ = layer._self_generated(xt, layer.proj_init.state(2))
    return F.cosine_similarity(k, v, dim=-1).mean().item()


def test_near_identity_projection_memories_start_with_k_equal_to_v_and_a_larger_std_separates_them():
    # Why `proj_init_std` exists (docs/paper_map.md): at the 0.02 default M_k and M_v are both
    # ≈ the identity, so k ≈ v and the self-referential error M(k) − M(v) starts at ≈ 0.
    for arch in ("mlp", "linear"):
        near, apart = _kv_cosine(0.02, arch), _kv_cosine(1 / 32 ** 0.5, arch)
        assert near > 0.98
        assert apart < 0.9


@pytest.mark.parametrize("self_modifying", [True, False])
def test_gates_start_at_eta_init_and_alpha_init_spread_over_the_heads(self_modifying):
    """With zero gate inputs the gates are σ(b): η = eta_init (capped at η_max / 2) on every head and α
    the per-head retentions, 1 − α geometric from the first head's value to the last's."""
    opts = MemoryOptions(self_modifying=self_modifying, eta_max=1.0, eta_init=0.5, alpha_init=(0.5, 0.999))
    mixer = SelfModifyingMemory(64, 4, opts).double()
    zero = torch.zeros(1, 1, 4, dtype=torch.float64)
    eta, alpha = mixer._gates(zero, zero)
    torch.testing.assert_close(eta.flatten(), torch.full((4,), 0.5, dtype=torch.float64), rtol=0, atol=1e-7)
    forget = torch.tensor([0.5, 0.5 * (0.002 ** (1 / 3)), 0.5 * (0.002 ** (2 / 3)), 0.001], dtype=torch.float64)
    torch.testing.assert_close(alpha.flatten(), 1 - forget, rtol=0, atol=1e-7)
    capped = SelfModifyingMemory(64, 4, MemoryOptions(self_modifying=self_modifying, eta_max=0.05, eta_init=0.5))
    assert torch.sigmoid(capped.b_eta).mul(0.05).allclose(torch.tensor(0.025))


def test_default_gate_biases_are_the_spec_decision_bit_for_bit():
    """SPEC §3's decision (η ≈ 0.1, α ≈ 0.999 on every head) keeps the float32 biases the mixer had before
    `alpha_init` existed, so runs with the defaults are unchanged."""
    mixer = SelfModifyingMemory(64, 4, MemoryOptions())
    assert torch.equal(mixer.b_alpha.data, torch.full((4,), math.log(0.999 / 0.001)))
    assert torch.equal(mixer.b_eta.data, torch.full((4,), math.log(0.1) - math.log1p(-0.1)))
    assert torch.equal(head_retentions((0.9,), 3), torch.full((3,), 0.9, dtype=torch.float64))


def test_under_autocast_the_recurrence_runs_in_float32():
    """bf16 rounds α = 0.999 to 1: under autocast the mixer keeps its memories, gates and fast
    weights in float32, so its state is exactly the float32 one; only the output projection is bf16."""
    assert torch.tensor(0.999).bfloat16().item() == 1.0      # why: no retention left in bf16
    torch.manual_seed(0)
    for opts in (MemoryOptions(eta_max=0.05, projection_chunk_size=8, chunk_size=4),
                 MemoryOptions(self_modifying=False, memory_arch="linear", momentum=0.0, chunk_size=4)):
        mixer = SelfModifyingMemory(32, 2, opts)
        x = torch.randn(2, 21, 32)
        y, ref = mixer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_bf, st = mixer(x)
        assert y_bf.dtype == torch.bfloat16
        for a, b in ((ref.mem, st.mem), (ref.proj, st.proj)):
            if a is not None:
                for name in ("W", "W1", "W2"):
                    if getattr(a, name, None) is not None:
                        assert getattr(b, name).dtype == torch.float32
                        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=0)
        torch.testing.assert_close(y_bf.float(), y, rtol=0, atol=2e-2 * y.abs().max().item())


def _periodic_run(max_norm: float, P: int, C: int, T: int) -> tuple[bool, float]:
    """The first mixer of a small hope (its projection memories started apart, proj_init_std 0.3,
    and η at η_max) fed the embedding of a repeated sentence, T tokens in pieces of 32. Returns
    whether every output was finite and the largest RMS row norm of the projection memories'
    reference weights (ref_*, the weights a chunk reads and takes its gradients at) seen where a
    piece ends inside a projection chunk."""
    import hopelm
    from hopelm.ops.memory import rms_row_norm

    torch.manual_seed(0)
    model = hopelm.build_model("hope", preset="tiny", vocab_size=256, d_model=64, n_layers=2, n_heads=2,
                               proj_init_std=0.3, projection_chunk_size=P, chunk_size=C, memory_max_norm=max_norm)
    mixer = model.blocks[0].mixer
    with torch.no_grad():
        mixer.b_eta.fill_(5.0)
        x = model.embed(torch.tensor([list(b"Mary is." * (T // 8))]))
        finite, largest, state = True, 0.0, None
        for piece in x.split(32, dim=1):
            y, state = mixer(piece, state)
            finite &= bool(torch.isfinite(y).all())
            if state.proj.ref_W1 is not None:
                largest = max(largest, *(rms_row_norm(W).max().item() for W in (state.proj.ref_W1, state.proj.ref_W2)))
    return finite, largest


@pytest.mark.parametrize("P,C,T", [(64, 16, 2048), (1, 1, 640)])
def test_bounded_memories_keep_a_repetitive_input_finite_where_the_printed_rule_overflows(P, C, T):
    """The failure `memory_max_norm` exists for (docs/paper_map.md, "Bounded memories"): on a
    periodic input the self-generated targets of the projection memories feed back on their own
    weights until they overflow, at the presets' chunk sizes and at chunk size 1 (the exact
    sequential rule: the rule itself, not the chunked approximation). With the bound every chunk
    reads from weights within it, and the output stays finite."""
    assert _periodic_run(0.0, P, C, T)[0] is False
    finite, largest = _periodic_run(4.0, P, C, T)
    assert finite and largest <= 4.0 * (1 + 1e-6)
    assert largest > 0 or P == 1          # chunks of one token are always whole: no ref_* to look at


def test_projection_memories_are_read_at_the_bounded_reference():
    """A chunk of the projection memories reads k, v, η, α at the same bounded reference state that
    its writes take their gradients at (SPEC §4; "Bounded memories" in docs/paper_map.md). Reading
    the unbounded chunk-end state instead let raw values (normalize_v=False) and M_v's own target
    M_v(v) grow each other chunk after chunk: v ≈ 1e16 and a NaN validation loss for tiny hope on
    PG19-mini with the bound on. So a state far outside the ball and its projection onto the ball
    must give the same output and the same new state."""
    from dataclasses import replace

    from hopelm.ops.memory import bound_weights, rms_row_norm

    torch.manual_seed(0)
    opts = MemoryOptions(eta_max=0.05, projection_chunk_size=8, chunk_size=4, memory_max_norm=4.0, normalize_v=False)
    mixer = SelfModifyingMemory(32, 2, opts).double()
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    _, st = mixer(x[:, :16])                                         # 16 tokens: the next one starts a chunk
    big = replace(st.proj, W1=st.proj.W1 * 1e3, W2=st.proj.W2 * 1e3)
    assert rms_row_norm(big.W2).min() > 4.0
    inside = replace(big, **bound_weights({"W1": big.W1, "W2": big.W2}, 4.0))
    y_big, s_big = mixer(x[:, 16:], replace(st, proj=big))
    y_in, s_in = mixer(x[:, 16:], replace(st, proj=inside))
    torch.testing.assert_close(y_big, y_in, rtol=1e-10, atol=1e-10)
    for name in ("W1", "W2"):
        torch.testing.assert_close(getattr(s_big.proj, name), getattr(s_in.proj, name), rtol=1e-10, atol=1e-10)


def test_projection_rate_is_a_clock_between_the_spec_rule_and_frozen_projection_memories():
    """projection_rate s writes the projection memories with s·η and retention 1 − s(1 − α): s = 1 is
    SPEC §3's rule bit for bit, and as s → 0 the memories stay at M_□,0, which is what
    projection_writes=False reads; in between, the new state moves by about s times as much."""
    from dataclasses import replace

    torch.manual_seed(0)
    base = MemoryOptions(eta_max=1.0, eta_init=0.5, alpha_init=(0.5, 0.999), projection_chunk_size=8, chunk_size=4)
    mixer = SelfModifyingMemory(32, 2, base).double()
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    y, st = mixer(x)
    init = mixer.proj_init.state(2)

    def run(**kw):
        mixer.opts = replace(base, **kw)
        return mixer(x)

    y1, st1 = run(projection_rate=1.0)
    assert torch.equal(y1, y) and torch.equal(st1.proj.W1, st.proj.W1)
    y0, st0 = run(projection_rate=1e-12)
    yf, _ = run(projection_writes=False)
    torch.testing.assert_close(y0, yf, rtol=0, atol=1e-9)
    torch.testing.assert_close(st0.proj.W1, init.W1, rtol=0, atol=1e-9)
    _, st_small = run(projection_rate=1e-4)
    moved = lambda s: (s.proj.W1 - init.W1).abs().max().item()
    assert 0 < moved(st_small) < 1e-2 * moved(st)
