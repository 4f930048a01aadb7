"""The associative memory (SPEC §2–4): naive == chunk == repeated step, the literal Eq. 88, causality,
and the chunk approximation being real but vanishing with the learning rate."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from hopelm.ops import MemoryState, chunk_memory, naive_memory, step_memory
from hopelm.ops.memory import bound_weights, read_grouped, read_memory, rms_row_norm, silu_grad

from .helpers import F64, assert_close, grads, rand_like_leaf, seq_inputs

B, H, D, DM = 2, 2, 4, 6
FIELDS = ["W", "W1", "W2", "S", "S1", "S2", "ref_W", "ref_W1", "ref_W2"]
OPTION_NAMES = ["arch", "objective", "precondition", "momentum", "self_target", "read_after_write", "detach_inner"]
ALL_OPTIONS = list(itertools.product(["linear", "mlp"], ["l2", "dot"], [True, False], [0.0, 0.5],
                                     [True, False], [False, True], [False, True]))
# Representative configurations for the length × chunk-size sweep.
PRESETS = {
    "hope": dict(arch="mlp", objective="l2", precondition=True, momentum=0.0, self_target=True),
    "titans": dict(arch="mlp", objective="l2", precondition=False, momentum=0.5, self_target=False),
    "dgd+momentum": dict(arch="mlp", objective="l2", precondition=True, momentum=0.5, self_target=True,
                         read_after_write=True),
    "linear-dot": dict(arch="linear", objective="dot", precondition=True, momentum=0.5, self_target=True,
                       detach_inner=True),
}


def initial_state(arch: str, momentum: float, dtype=F64) -> MemoryState:
    if arch == "linear":
        s = MemoryState(W=rand_like_leaf((B, H, D, D), 1, dtype=dtype))
        if momentum:
            s.S = rand_like_leaf((B, H, D, D), 2, scale=0.1, dtype=dtype)
        return s
    s = MemoryState(W1=rand_like_leaf((B, H, D, DM), 1, dtype=dtype), W2=rand_like_leaf((B, H, DM, D), 2, dtype=dtype))
    if momentum:
        s.S1 = rand_like_leaf((B, H, D, DM), 3, scale=0.1, dtype=dtype)
        s.S2 = rand_like_leaf((B, H, DM, D), 4, scale=0.1, dtype=dtype)
    return s


def state_leaves(s: MemoryState) -> list[torch.Tensor]:
    return [getattr(s, f) for f in FIELDS if getattr(s, f) is not None]


def run(fn, x, s0, **opts):
    """Outputs, every field of the final state, and gradients w.r.t. q, k, v, eta, alpha and s0."""
    o, s = fn(x["q"], x["k"], x["v"], x["eta"], x["alpha"], s0, **opts)
    outs = [o] + [getattr(s, f) for f in FIELDS]
    return outs + grads(outs, [x[n] for n in ("q", "k", "v", "eta", "alpha")] + state_leaves(s0)), s


def check_parity(T: int, C: int, opts: dict, eta_max: float = 0.5, dtype=F64, tol: float = 1e-10):
    x = seq_inputs(B, T, H, D, eta_max=eta_max, dtype=dtype)
    s0 = initial_state(opts.get("arch", "mlp"), opts.get("momentum", 0.0), dtype=dtype)
    a, sa = run(naive_memory, x, s0, chunk_size=C, **opts)
    b, sb = run(chunk_memory, x, s0, chunk_size=C, **opts)
    names = ["o"] + FIELDS + ["dq", "dk", "dv", "deta", "dalpha"] + [f"d{f}0" for f in FIELDS if getattr(s0, f) is not None]
    for name, u, w in zip(names, a, b):
        assert_close(u, w, tol=tol, what=name)
    assert sa.pos == sb.pos == T


@pytest.mark.parametrize("C", [1, 8, 16])
@pytest.mark.parametrize("options", ALL_OPTIONS, ids=lambda o: "-".join(map(str, o)))
def test_every_option_combination(options, C):
    check_parity(23, C, dict(zip(OPTION_NAMES, options)))


@pytest.mark.parametrize("C", [1, 8, 16, 64])
@pytest.mark.parametrize("T", [1, 7, 64, 100, 257])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_lengths_and_chunk_sizes(preset, T, C):
    # long sequences with the self-referential dot objective grow fast: keep η small there
    check_parity(T, C, PRESETS[preset], eta_max=0.5 if T <= 64 else 0.2)


@pytest.mark.slow
@pytest.mark.parametrize("C", [1, 8, 16, 64])
@pytest.mark.parametrize("T", [1, 7, 64, 100, 257])
@pytest.mark.parametrize("options", ALL_OPTIONS, ids=lambda o: "-".join(map(str, o)))
def test_full_product(options, T, C):
    check_parity(T, C, dict(zip(OPTION_NAMES, options)), eta_max=0.2)


@pytest.mark.parametrize("preset", ["hope", "titans"])
def test_float32_relative(preset):
    check_parity(100, 16, PRESETS[preset], dtype=torch.float32, tol=1e-4)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("arch", ["linear", "mlp"])
def test_prefill_then_decode_then_prefill(arch, momentum):
    """chunk_memory (ends mid-chunk) -> step_memory × 6 -> chunk_memory == one chunk_memory call."""
    opts = dict(arch=arch, momentum=momentum, chunk_size=8)
    T = 40
    x = seq_inputs(B, T, H, D)
    s0 = initial_state(arch, momentum)
    o_ref, s_ref = chunk_memory(x["q"], x["k"], x["v"], x["eta"], x["alpha"], s0, **opts)
    part = lambda a, b: [x[n][:, a:b] for n in ("q", "k", "v", "eta", "alpha")]
    o1, s = chunk_memory(*part(0, 13), s0, **opts)
    assert s.pos == 13 and all(getattr(s, "ref_" + n) is not None for n in (["W"] if arch == "linear" else ["W1", "W2"]))
    outs = [o1]
    for t in range(13, 19):
        o, s = step_memory(*part(t, t + 1), s, **opts)
        outs.append(o)
    o3, s = chunk_memory(*part(19, T), s, **opts)
    assert_close(o_ref, torch.cat(outs + [o3], 1), what="o")
    for f in FIELDS:
        assert_close(getattr(s_ref, f), getattr(s, f), what=f)
    # the explicit position counter gives the same step
    p = part(13, 14)
    _, s_a = chunk_memory(*part(0, 13), s0, **opts)
    o_a, _ = step_memory(*p, s_a, **opts)
    o_b, _ = step_memory(*p, s_a, pos=13, **opts)
    assert_close(o_a, o_b)


# ---------------------------------------------------------------------------------------------
# NL Eq. 88 written out by hand, gradients by autograd (independent of the analytic gradients)

def literal_eq88(x, s0, *, arch, objective, precondition, momentum, self_target, read_after_write):
    """Per sequence b, head h, token t, with the exact sequential semantics (chunk_size = 1)."""
    T = x["q"].shape[1]
    names = ["W"] if arch == "linear" else ["W2", "W1"]
    mom = {"W": "S", "W1": "S1", "W2": "S2"}
    o = torch.zeros(B, T, H, D, dtype=F64)
    final = {}
    for b, h in itertools.product(range(B), range(H)):
        W = {n: getattr(s0, n)[b, h].detach().clone() for n in names}
        S = {n: (getattr(s0, mom[n])[b, h].detach().clone() if momentum else torch.zeros_like(W[n])) for n in names}

        def M(Wd, y):
            if arch == "linear":
                return Wd["W"] @ y
            return y + Wd["W1"] @ F.silu(Wd["W2"] @ y)

        for t in range(T):
            q, k, v = (x[n][b, t, h].detach() for n in "qkv")
            eta, alpha = x["eta"][b, t, h].item(), x["alpha"][b, t, h].item()
            if not read_after_write:
                o[b, t, h] = M(W, q)
            target = M(W, v) if self_target else v            # v̂ = M_{t−1}(v), a constant target
            leaf = {n: w.clone().requires_grad_() for n, w in W.items()}
            loss = 0.5 * (M(leaf, k) - target).square().sum() if objective == "l2" else -(M(leaf, k) @ target)
            G = dict(zip(names, torch.autograd.grad(loss, [leaf[n] for n in names])))
            new = {}
            for n in names:
                S[n] = momentum * S[n] - eta * G[n]           # momentum=0: S = −η G
                if n == names[0] and precondition:            # input-side weight: W (αI − η k kᵀ)
                    P = alpha * torch.eye(D, dtype=F64) - eta * torch.outer(k, k)
                    new[n] = W[n] @ P + S[n]
                else:
                    new[n] = alpha * W[n] + S[n]
            W = new
            if read_after_write:
                o[b, t, h] = M(W, q)
        for n in names:
            final.setdefault(n, torch.zeros_like(getattr(s0, n)))[b, h] = W[n]
    return o, final


@pytest.mark.parametrize("options", [o[:6] for o in ALL_OPTIONS if not o[6]], ids=lambda o: "-".join(map(str, o)))
def test_naive_chunk1_is_literal_eq88(options):
    opts = dict(zip(OPTION_NAMES[:6], options))
    x = seq_inputs(B, 9, H, D)
    s0 = initial_state(opts["arch"], opts["momentum"])
    o_lit, W_lit = literal_eq88(x, s0, **opts)
    for fn in (naive_memory, chunk_memory):
        with torch.no_grad():
            o, s = fn(x["q"], x["k"], x["v"], x["eta"], x["alpha"], s0, chunk_size=1, **opts)
        assert_close(o_lit, o, what=f"{fn.__name__} o")
        for n, w in W_lit.items():
            assert_close(w, getattr(s, n), what=f"{fn.__name__} {n}")


# ---------------------------------------------------------------------------------------------
# causality and the chunk approximation

@pytest.mark.parametrize("preset", list(PRESETS))
def test_causality(preset):
    T, t0 = 40, 19
    x = seq_inputs(B, T, H, D)
    s0 = initial_state(PRESETS[preset]["arch"], PRESETS[preset]["momentum"])
    with torch.no_grad():
        o, _ = chunk_memory(*(x[n] for n in ("q", "k", "v", "eta", "alpha")), s0, chunk_size=8, **PRESETS[preset])
        y = {n: t.detach().clone() for n, t in x.items()}
        for n in ("q", "k", "v"):
            y[n][:, t0] = F.normalize(torch.randn_like(y[n][:, t0]), dim=-1)
        y["eta"][:, t0], y["alpha"][:, t0] = 0.05, 0.9
        o2, _ = chunk_memory(*(y[n] for n in ("q", "k", "v", "eta", "alpha")), s0, chunk_size=8, **PRESETS[preset])
    assert (o[:, :t0] - o2[:, :t0]).abs().max() < 1e-12
    assert (o[:, t0:] - o2[:, t0:]).abs().max() > 1e-6


def _outputs(x, s0, C, scale, **opts):
    """Learning rate η·scale; the forgetting rate 1 − α shrinks with it, since retention alone moves
    the state away from the chunk-start reference by O(1 − α) whatever η is."""
    with torch.no_grad():
        alpha = 1 - (1 - x["alpha"]) * scale
        return chunk_memory(x["q"], x["k"], x["v"], x["eta"] * scale, alpha, s0, chunk_size=C, **opts)[0]


@pytest.mark.parametrize("arch", ["linear", "mlp"])
def test_chunking_is_a_real_approximation_that_vanishes_with_the_learning_rate(arch):
    """State-dependent gradients: C=16 differs from the exact C=1, by O(η²) against an O(η) update
    (with the forgetting rate 1 − α scaled together with η, see _outputs)."""
    x = seq_inputs(B, 64, H, D, eta_max=1.0)
    s0 = initial_state(arch, 0.0)
    rel = []
    for scale in (0.5, 0.05, 0.005):
        o1, o16, o0 = (_outputs(x, s0, C, sc, arch=arch) for C, sc in ((1, scale), (16, scale), (1, 0.0)))
        rel.append(((o16 - o1).norm() / (o1 - o0).norm()).item())
    assert rel[0] > 1e-2                      # the approximation is real
    assert rel[2] < rel[1] < rel[0]           # and shrinks with the learning rate ...
    assert rel[2] < 0.05 * rel[0]             # ... linearly (ratio of O(η²) to O(η))


def test_state_independent_gradients_make_chunking_exact():
    """Linear memory, dot objective, v̂ = v: G_t = −v_t k_tᵀ does not depend on the state."""
    x = seq_inputs(B, 50, H, D)
    s0 = initial_state("linear", 0.0)
    opts = dict(arch="linear", objective="dot", self_target=False)
    assert_close(_outputs(x, s0, 1, 1.0, **opts), _outputs(x, s0, 16, 1.0, **opts))


@pytest.mark.parametrize("objective, rate", [("l2", 2.0), ("dot", 1.0)])
def test_one_dgd_step_is_a_gated_delta_rule(objective, rate):
    """Linear memory, v̂ = v, unit k: with l2, Eq. 88 taken literally gives W(αI − 2η kkᵀ) + η v kᵀ
    (the preconditioner and the gradient each remove η kkᵀ), so along k the state is scaled by
    α − 2η and stays contractive only for η < (1 + α)/2; the dot objective gives α − η."""
    x = seq_inputs(B, 1, H, D, eta_max=1.0)
    s0 = initial_state("linear", 0.0)
    with torch.no_grad():
        _, s = step_memory(x["q"], x["k"], x["v"], x["eta"], x["alpha"], s0, arch="linear",
                           objective=objective, self_target=False, chunk_size=1)
    k, v = x["k"][:, 0], x["v"][:, 0]                                # [B, H, D], k unit norm
    eta, alpha = x["eta"][:, 0, :, None, None], x["alpha"][:, 0, :, None, None]
    eye = torch.eye(D, dtype=k.dtype)
    expected = s0.W @ (alpha * eye - rate * eta * k[..., :, None] * k[..., None, :]) + eta * v[..., :, None] * k[..., None, :]
    assert_close(expected, s.W, what="W_1")


# ---------------------------------------------------------------------------------------------
# gradcheck and errors

def test_gradcheck_chunk_memory():
    x = seq_inputs(1, 5, 2, 3, eta_max=0.5)
    W1 = rand_like_leaf((1, 2, 3, 4), 1)
    W2 = rand_like_leaf((1, 2, 4, 3), 2)

    def f(q, k, v, eta, alpha, W1, W2):
        o, s = chunk_memory(q, k, v, eta, alpha, MemoryState(W1=W1, W2=W2), chunk_size=2, momentum=0.5)
        return o, s.W1, s.W2, s.S1, s.S2

    assert torch.autograd.gradcheck(f, (x["q"], x["k"], x["v"], x["eta"], x["alpha"], W1, W2))


def test_bad_arguments_fail_with_one_clear_error():
    x = seq_inputs(B, 4, H, D)
    args = [x[n] for n in ("q", "k", "v", "eta", "alpha")]
    s = initial_state("mlp", 0.0)
    with pytest.raises(ValueError, match="arch"):
        chunk_memory(*args, s, arch="transformer")
    with pytest.raises(ValueError, match="objective"):
        chunk_memory(*args, s, objective="l1")
    with pytest.raises(ValueError, match="momentum"):
        chunk_memory(*args, s, momentum=1.0)
    with pytest.raises(ValueError, match="missing"):
        chunk_memory(*args, s, arch="linear")
    with pytest.raises(ValueError, match="max_norm"):
        chunk_memory(*args, s, max_norm=-1.0)
    with pytest.raises(ValueError, match="reference"):
        step_memory(*(a[:, :1] for a in args), MemoryState(W1=s.W1, W2=s.W2, pos=3), chunk_size=8)


@pytest.mark.parametrize("preset", ["hope", "dgd+momentum", "linear-dot"])
@pytest.mark.parametrize("T,C", [(13, 4), (8, 8)])
def test_grouped_write_without_read_equals_repeated_streams(preset, T, C):
    """groups=G with q=None (HOPE's projection memories): the same final state and gradients as G
    stacked memories each given a copy of k, v, η, α, with the read skipped."""
    G = 3
    opts = {**PRESETS[preset], "chunk_size": C}
    x = seq_inputs(B, T, H, D)
    v = x["v"]
    rep = lambda t: t.repeat(1, 1, G, *([1] * (t.dim() - 3)))
    init = initial_state(opts["arch"], opts["momentum"])
    s0 = MemoryState(**{f: rand_like_leaf(getattr(init, f).shape[:1] + (G * H,) + getattr(init, f).shape[2:], i)
                        for i, f in enumerate(FIELDS) if getattr(init, f) is not None})
    leaves = [x["k"], v, x["eta"], x["alpha"]] + state_leaves(s0)
    o, a = chunk_memory(rep(x["k"]), rep(x["k"]), rep(v), rep(x["eta"]), rep(x["alpha"]), s0, **opts)
    _, b = chunk_memory(None, x["k"], v, x["eta"], x["alpha"], s0, groups=G, **opts)
    outs_a, outs_b = state_leaves(a), state_leaves(b)
    assert o is not None and len(outs_a) == len(outs_b) > 0
    for f, ta, tb in zip(FIELDS, outs_a, outs_b):
        assert_close(ta, tb, what=f)
    for ga, gb in zip(grads(outs_a, leaves), grads(outs_b, leaves)):
        assert_close(ga, gb, what="grad")
    with pytest.raises(ValueError, match="heads"):
        chunk_memory(None, rep(x["k"]), v, x["eta"], x["alpha"], s0, groups=G, **opts)
    with pytest.raises(ValueError, match="q=None"):
        chunk_memory(x["k"], x["k"], v, x["eta"], x["alpha"], s0, groups=G, **opts)


@pytest.mark.parametrize("arch", ["mlp", "linear"])
def test_grouped_read_equals_reading_each_memory(arch):
    """read_grouped (one wide product for the input-side weight) == M_j(x) for each stacked memory."""
    G = 3
    init = initial_state(arch, 0.0)
    names = ("W1", "W2") if arch == "mlp" else ("W",)
    weights = {n: rand_like_leaf(getattr(init, n).shape[:1] + (G * H,) + getattr(init, n).shape[2:], i)
               for i, n in enumerate(names)}
    x = torch.randn(B, H, 7, D, dtype=F64, generator=torch.Generator().manual_seed(3))
    assert_close(read_grouped(weights, x, G), read_memory(weights, x.repeat(1, G, 1, 1)), what="read")


def test_silu_grad_matches_autograd_to_second_order():
    """silu_grad(y, z) = y ⊙ σ'(z) with an analytic backward: equal to differentiating SiLU with
    autograd, and its first and second derivatives pass gradcheck (cms_meta_grad="exact" needs them)."""
    gen = torch.Generator().manual_seed(0)
    y, z = (torch.randn(3, 5, dtype=F64, generator=gen).mul(3).requires_grad_() for _ in range(2))
    (ref,) = torch.autograd.grad(F.silu(z), z, y, create_graph=True)   # y ⊙ σ'(z) by autograd
    assert_close(silu_grad(y, z), ref, what="value")
    w = torch.randn(3, 5, dtype=F64, generator=gen)
    for a, b in zip(torch.autograd.grad((silu_grad(y, z) * w).sum(), (y, z)),
                    torch.autograd.grad((ref * w).sum(), (y, z))):
        assert_close(a, b, what="grad")
    assert torch.autograd.gradcheck(silu_grad, (y, z))
    assert torch.autograd.gradgradcheck(silu_grad, (y, z))


# ---------------------------------------------------------------------------------------------
# Bounded memories (max_norm) and an underflowed retention: stabilisers, same parity contract

@pytest.mark.parametrize("T,C", [(23, 8), (64, 16), (9, 1)])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_bounded_memory_keeps_parity_and_changes_the_computation(preset, T, C):
    """With max_norm active, naive == chunk (outputs, states, gradients) still holds, and the result
    differs from the unbounded memory (the bound is not a no-op at this radius)."""
    opts = {**PRESETS[preset], "max_norm": 0.3}
    check_parity(T, C, opts)
    x = seq_inputs(B, T, H, D)
    s0 = initial_state(opts["arch"], opts["momentum"])
    a, _ = chunk_memory(x["q"], x["k"], x["v"], x["eta"], x["alpha"], s0, chunk_size=C, **opts)
    b, _ = chunk_memory(x["q"], x["k"], x["v"], x["eta"], x["alpha"], s0, chunk_size=C, **PRESETS[preset])
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["mlp", "linear"])
def test_bound_holds_for_every_chunk_reference_and_a_loose_bound_changes_nothing(arch):
    """Stopping mid-chunk exposes the chunk's reference weights (ref_*): they are within the bound
    for every chunk of a stream that starts far outside it; a radius never reached gives exactly
    the unbounded memory."""
    C, R = 8, 0.05
    opts = dict(arch=arch, chunk_size=C)
    x = seq_inputs(B, 60, H, D, eta_max=0.9)
    s = initial_state(arch, 0.0)
    names = ["W"] if arch == "linear" else ["W1", "W2"]
    assert min(rms_row_norm(getattr(s, n)).min() for n in names) > 2 * R
    for start in range(0, 56, C):
        part = [x[n][:, start:start + C // 2] for n in ("q", "k", "v", "eta", "alpha")]
        _, mid = chunk_memory(*part, s, max_norm=R, **opts)
        for n in names:
            assert rms_row_norm(getattr(mid, "ref_" + n)).max() <= R * (1 + 1e-12)
        rest = [x[n][:, start + C // 2:start + C] for n in ("q", "k", "v", "eta", "alpha")]
        _, s = chunk_memory(*rest, mid, max_norm=R, **opts)
    args = [x[n] for n in ("q", "k", "v", "eta", "alpha")]
    s0 = initial_state(arch, 0.0)
    o_loose, s_loose = chunk_memory(*args, s0, max_norm=1e6, **opts)
    o_off, s_off = chunk_memory(*args, s0, **opts)
    assert torch.equal(o_loose, o_off) and all(torch.equal(getattr(s_loose, n), getattr(s_off, n)) for n in names)


def test_the_projection_path_where_nothing_is_outside_equals_skipping_it(monkeypatch):
    """On a GPU and under torch.compile the bound always multiplies by min(1, ·) instead of first
    checking on the host whether any weight is outside: with nothing outside, same outputs, states
    and gradients as the eager CPU path that skips it."""
    x = seq_inputs(B, 21, H, D)
    s0 = initial_state("mlp", 0.0)
    runs = []
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
        runs.append(run(chunk_memory, x, s0, chunk_size=8, max_norm=1e3, **PRESETS["hope"])[0])
    for u, w in zip(*runs):
        assert_close(u, w, tol=1e-14)


@pytest.mark.parametrize("tiny", [1e-20, 3e-21, 1e-22])
def test_bound_gradient_stays_finite_next_to_a_memory_that_decayed_to_almost_nothing(tiny):
    """A memory whose weights decayed to ~1e-20 sits in the same tensor as one being projected
    (float32, as training runs). Its scale is 1, so its gradient is the incoming one; the old
    min(1, R / ‖W‖) form made NaN there: the reciprocal's backward −g / ‖W‖² overflowed to inf and
    the clamp's zero gradient times inf is NaN (found by --train.trace_nonfinite in a hope run)."""
    x = seq_inputs(B, 12, H, D, dtype=torch.float32)
    s0 = initial_state("mlp", 0.0, dtype=torch.float32)
    with torch.no_grad():
        s0.W1[0, 0].mul_(tiny)                    # decayed memory: sequence 0, head 0
        s0.W1[1, 1].mul_(100.0)                   # far outside the bound: the projection runs
    assert rms_row_norm(s0.W1[1, 1]) > 1.0 > 1e-19 > rms_row_norm(s0.W1[0, 0])
    o, s = chunk_memory(x["q"], x["k"], x["v"], x["eta"], x["alpha"], s0, chunk_size=4, max_norm=1.0, **PRESETS["hope"])
    gs = grads([o, s.W1, s.W2], [x["q"], x["k"], x["v"], x["eta"], x["alpha"], s0.W1, s0.W2])
    assert all(torch.isfinite(g).all() for g in gs)
    W = s0.W1.detach().clone().requires_grad_()
    out = bound_weights({"W1": W}, 1.0)["W1"]
    (g,) = torch.autograd.grad(out, W, torch.ones_like(out))
    assert torch.equal(g[0, 0], torch.ones_like(g[0, 0]))             # scale 1: the gradient passes
    assert torch.equal(out[0, 0], W[0, 0]) and rms_row_norm(out[1, 1]) <= 1.0 + 1e-6


def test_bounded_grouped_write_bounds_each_memory_alone():
    """groups=G: the bound applies per stacked memory, as if each memory were its own stream."""
    G, T, C = 3, 13, 4
    opts = {**PRESETS["hope"], "chunk_size": C, "max_norm": 0.3}
    x = seq_inputs(B, T, H, D)
    rep = lambda t: t.repeat(1, 1, G, *([1] * (t.dim() - 3)))
    s0 = MemoryState(W1=rand_like_leaf((B, G * H, D, DM), 1, scale=0.5), W2=rand_like_leaf((B, G * H, DM, D), 2, scale=0.5))
    _, a = chunk_memory(rep(x["k"]), rep(x["k"]), rep(x["v"]), rep(x["eta"]), rep(x["alpha"]), s0, **opts)
    _, b = chunk_memory(None, x["k"], x["v"], x["eta"], x["alpha"], s0, groups=G, **opts)
    for f in ("W1", "W2"):
        assert_close(getattr(a, f), getattr(b, f), what=f)


def test_retention_that_underflowed_to_zero_stays_finite_and_matches_naive():
    """α = σ(logit) underflows to exactly 0 for a very negative logit: the chunked form takes logs
    of α and must not turn log 0 = −inf into NaN. Outputs, states and the gradients reaching the
    logits (σ' underflows there too) agree with the per-token form."""
    T, C = 19, 8
    x = seq_inputs(B, T, H, D)
    logit = torch.randn(B, T, H, dtype=F64, generator=torch.Generator().manual_seed(5)) + 3.0
    logit[:, 5] = -800.0                           # σ(−800) == 0 in float64
    logit.requires_grad_()
    assert (torch.sigmoid(logit) == 0).any()
    s0 = initial_state("mlp", 0.0)
    leaves = [x["q"], x["k"], x["v"], logit, s0.W1, s0.W2]
    res = []
    for fn in (naive_memory, chunk_memory):
        o, s = fn(x["q"], x["k"], x["v"], x["eta"], torch.sigmoid(logit), s0, chunk_size=C, **PRESETS["hope"])
        res.append([o, s.W1, s.W2] + grads([o, s.W1, s.W2], leaves))
    for name, u, w in zip(["o", "W1", "W2", "dq", "dk", "dv", "dlogit", "dW1", "dW2"], *res):
        assert torch.isfinite(w).all(), name
        assert_close(u, w, what=name)
