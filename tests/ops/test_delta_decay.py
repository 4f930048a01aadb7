"""naive == chunk == repeated step for the gated delta rule (delta.py) and decayed linear attention
(decay.py), on outputs, final states and gradients (SPEC §2, §4; float64 to 1e-10)."""
from __future__ import annotations

import functools

import pytest
import torch

from hopelm.ops import chunk_decay, chunk_delta, naive_decay, naive_delta, step_decay, step_delta

from .helpers import F64, assert_close, grads, rand_like_leaf, seq_inputs

B, H, DK, DV = 2, 2, 5, 3
OPS = {"delta": (naive_delta, chunk_delta, step_delta), "decay": (naive_decay, chunk_decay, step_decay)}


def case(T: int, beta: float, dtype=F64):
    x = seq_inputs(B, T, H, DK, dv=DV, dtype=dtype)
    S0 = rand_like_leaf((B, H, DV, DK), seed=1, dtype=dtype)
    M0 = rand_like_leaf((B, H, DV, DK), seed=2, dtype=dtype) if beta else None
    return x, S0, M0


def leaves(x, S0, M0):
    return [x["q"], x["k"], x["v"], x["eta"], x["alpha"], S0] + ([M0] if M0 is not None else [])


def run(fn, x, S0, M0, beta, raw, **kw):
    o, S, M = fn(x["q"], x["k"], x["v"], x["eta"], x["alpha"], S0, M0, beta=beta, read_after_write=raw, **kw)
    return [o, S, M] + grads([o, S, M], leaves(x, S0, M0))


@functools.lru_cache(maxsize=None)
def naive_result(op: str, T: int, beta: float, raw: bool):
    x, S0, M0 = case(T, beta)
    return run(OPS[op][0], x, S0, M0, beta, raw)


@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("C", [1, 8, 16, 64])
@pytest.mark.parametrize("T", [1, 7, 64, 100, 257])
@pytest.mark.parametrize("op", ["delta", "decay"])
def test_chunk_matches_naive(op, T, C, beta, raw):
    x, S0, M0 = case(T, beta)
    got = run(OPS[op][1], x, S0, M0, beta, raw, chunk_size=C)
    names = ["o", "S", "M", "dq", "dk", "du", "deta", "dalpha", "dS0", "dM0"]
    for name, a, b in zip(names, naive_result(op, T, beta, raw), got):
        assert_close(a, b, what=f"{op} {name}")


@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("op", ["delta", "decay"])
def test_repeated_step_and_carried_state(op, beta):
    """chunk on a prefix, step token by token, chunk on the rest == naive on the whole sequence."""
    naive, chunk, step = OPS[op]
    T = 30
    x, S0, M0 = case(T, beta)
    o_ref, S_ref, M_ref = naive(x["q"], x["k"], x["v"], x["eta"], x["alpha"], S0, M0, beta=beta)
    part = lambda t, a, b: {n: v[:, a:b] for n, v in t.items()}
    p = part(x, 0, 11)
    o1, S, M = chunk(p["q"], p["k"], p["v"], p["eta"], p["alpha"], S0, M0, beta=beta, chunk_size=8)
    outs = [o1]
    for t in range(11, 17):
        p = part(x, t, t + 1)
        o, S, M = step(p["q"], p["k"], p["v"], p["eta"], p["alpha"], S, M, beta=beta)
        outs.append(o)
    p = part(x, 17, T)
    o3, S, M = chunk(p["q"], p["k"], p["v"], p["eta"], p["alpha"], S, M, beta=beta, chunk_size=8)
    assert_close(o_ref, torch.cat(outs + [o3], 1), what="o")
    assert_close(S_ref, S, what="S")
    assert_close(M_ref, M, what="M")


@pytest.mark.parametrize("op", ["delta", "decay"])
def test_float32_relative(op):
    naive, chunk, _ = OPS[op]
    x, S0, M0 = case(100, 0.5, dtype=torch.float32)
    a = run(naive, x, S0, M0, 0.5, False)
    b = run(chunk, x, S0, M0, 0.5, False, chunk_size=16)
    for u, w in zip(a, b):
        assert_close(u, w, tol=1e-4)


def test_delta_rule_is_the_literal_recurrence():
    """S_t = S_{t−1}(α_t I − η_t k_t k_tᵀ) + η_t u_t k_tᵀ written with explicit matrices, one (b, h)."""
    x, S0, _ = case(9, 0.0)
    o, S, _ = chunk_delta(x["q"], x["k"], x["v"], x["eta"], x["alpha"], S0, chunk_size=4)
    for b in range(B):
        for h in range(H):
            St = S0[b, h].detach().clone()
            for t in range(9):
                q, k, u = (x[n][b, t, h].detach() for n in "qkv")
                e, a = x["eta"][b, t, h].item(), x["alpha"][b, t, h].item()
                assert_close(St @ q, o[b, t, h])
                St = St @ (a * torch.eye(DK, dtype=F64) - e * torch.outer(k, k)) + e * torch.outer(u, k)
            assert_close(St, S[b, h])


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_chunk_delta_runs_in_bfloat16_and_under_autocast(beta):
    """Triangular solves have no bfloat16 kernel: the WY solve runs in float32 (delta.unit_lower_solve),
    so bfloat16 inputs and autocast's mixed float32 / bfloat16 operands (as on CUDA) work, and the
    result stays close to the float64 one."""
    x, S0, M0 = case(100, beta)
    ref = chunk_delta(x["q"], x["k"], x["v"], x["eta"], x["alpha"], S0, M0, beta=beta, chunk_size=16)
    bf = {n: t.detach().bfloat16() for n, t in x.items()}
    o, S, _ = chunk_delta(bf["q"], bf["k"], bf["v"], bf["eta"], bf["alpha"], S0.detach().bfloat16(),
                          None if M0 is None else M0.detach().bfloat16(), beta=beta, chunk_size=16)
    assert o.dtype == S.dtype == torch.bfloat16
    assert_close(ref[0], o.double(), tol=5e-2, what="o")
    assert_close(ref[1], S.double(), tol=5e-2, what="S")
    f32 = {n: t.detach().float() for n, t in x.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, S, _ = chunk_delta(f32["q"], f32["k"], f32["v"], f32["eta"], f32["alpha"], S0.detach().float(),
                              None if M0 is None else M0.detach().float(), beta=beta, chunk_size=16)
    assert_close(ref[0], o.double(), tol=5e-2, what="o (autocast)")
