from __future__ import annotations

import pytest
import torch

from hopelm.optim.m3 import M3
from hopelm.optim.muon import Muon
from hopelm.optim.newton_schulz import newton_schulz

SHAPES = [(6, 6), (4, 9), (10, 3)]


def grad_stream(shapes, steps, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=dtype) * (0.1 + 0.05 * t) for s in shapes] for t in range(steps)]


def params_for(shapes, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def drive(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()


def muon_with_second_moment(params, grads, lr, b1, b2, eps, wd, update_rms, ns_steps):
    """Hand-written reference: Muon on an EMA momentum, divided elementwise by Adam's √v̂."""
    params = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u = newton_schulz(m[i], ns_steps) / ((v[i] / (1 - b2 ** t)).sqrt() + eps)
            if update_rms:
                u = u * update_rms / u.pow(2).mean().sqrt()
            params[i] = params[i] * (1 - lr * wd) - lr * u
    return params


@pytest.mark.parametrize("update_rms,lr", [(0.2, 0.02), (0.0, 1e-4)])
def test_m3_without_slow_branch_is_muon_with_second_moment(update_rms, lr):
    params = params_for(SHAPES)
    grads = grad_stream(SHAPES, 25)
    ref = muon_with_second_moment(params, grads, lr, 0.9, 0.95, 1e-8, 0.1, update_rms, 5)
    opt = M3(params, lr=lr, betas=(0.9, 0.95), alpha=0.0, f=1, weight_decay=0.1, update_rms=update_rms,
             ns_dtype="float64")
    drive(opt, params, grads)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)


def literal_algorithm_1(params, grads, lr, b1, b2, b3, alpha, f, eps):
    """NL Algorithm 1 as printed: running sums; M2 and O2 refreshed from the last f gradients at the
    start of every slow period, then held for its f steps."""
    params = [p.detach().clone() for p in params]
    n = len(params)
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    o2 = [torch.zeros_like(p) for p in params]
    for k in range(0, len(grads), f):                     # slow iterations
        if k > 0:
            for i in range(n):
                m2[i] = m2[i] + b3 * sum(grads[j][i] for j in range(k - f, k))
                o2[i] = newton_schulz(m2[i])
        for t in range(k, min(k + f, len(grads))):        # fast iterations
            for i in range(n):
                g = grads[t][i]
                m1[i] = m1[i] + b1 * g
                v[i] = v[i] + b2 * g * g
                o1 = newton_schulz(m1[i])
                params[i] = params[i] - lr * (o1 + alpha * o2[i]) / (v[i].sqrt() + eps)
    return params


def test_m3_sum_variant_is_algorithm_1_literally():
    params = params_for(SHAPES)
    grads = grad_stream(SHAPES, 14)
    ref = literal_algorithm_1(params, grads, 1e-4, 0.9, 0.5, 0.7, 0.6, 4, 1e-8)
    opt = M3(params, lr=1e-4, betas=(0.9, 0.5), beta3=0.7, alpha=0.6, f=4, accumulate="sum",
             update_rms=0.0, ns_dtype="float64")
    drive(opt, params, grads)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)


def test_slow_branch_changes_only_at_period_ends():
    p = params_for([(5, 4)])[0]
    opt = M3([p], alpha=1.0, f=3)
    seen = []
    for gs in grad_stream([(5, 4)], 7):
        p.grad = gs[0]
        opt.step()
        seen.append(opt.state[p]["o2"].clone())
    assert torch.equal(seen[0], torch.zeros(5, 4)) and torch.equal(seen[1], seen[0])
    assert not torch.equal(seen[2], seen[1]) and torch.equal(seen[3], seen[2]) and torch.equal(seen[4], seen[2])
    assert not torch.equal(seen[5], seen[4])


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-0.1), "lr"), (dict(betas=(1.0, 0.9)), "beta1"), (dict(betas=(0.9, 1.2)), "beta2"),
    (dict(beta3=-0.5), "beta3"), (dict(f=0), "frequency f"), (dict(f=2.5), "frequency f"),
    (dict(alpha=-1.0), "alpha"), (dict(accumulate="mean"), "accumulate"), (dict(ns_steps=0), "ns_steps"),
])
def test_bad_hyper_parameters_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M3([torch.zeros(3, 3, requires_grad=True)], **kwargs)


def test_m3_rejects_vectors():
    with pytest.raises(ValueError, match="2-D"):
        M3([torch.zeros(3, requires_grad=True)])


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
@pytest.mark.parametrize("nesterov", [True, False])
def test_our_muon_fallback_tracks_torch_muon(nesterov):
    shapes = [(16, 16), (8, 24), (24, 8)]
    ours, ref = params_for(shapes, dtype=torch.float32), params_for(shapes, dtype=torch.float32)
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    a, b = Muon(ours, **kw), torch.optim.Muon(ref, **kw)
    grads = grad_stream(shapes, 10, dtype=torch.float32)
    drive(a, ours, grads)
    drive(b, ref, grads)
    for p, q in zip(ours, ref):   # both orthogonalize in bfloat16; the rounding order may differ
        torch.testing.assert_close(p, q, rtol=0, atol=3e-3)
