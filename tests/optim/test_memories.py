from __future__ import annotations

import pytest
import torch

from hopelm.optim.memories import DMGD, AdamAsMemory, DeltaMomentum, PreconditionedMomentum, l2_memory_write

SHAPES = [(7,), (5, 3), (4, 6), (2, 3, 5)]


def quadratic_stream(params, steps: int, seed: int):
    """Deterministic, non-trivial gradients: a random quadratic plus noise per step."""
    g = torch.Generator().manual_seed(seed)
    targets = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    noise = [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(steps)]

    def grads(step):
        return [(p.detach() - t) * (1 + 0.5 * (i % 3)) + 0.3 * n
                for i, (p, t, n) in enumerate(zip(params, targets, noise[step]))]
    return grads


def make_params(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def run(opt_cls, kwargs, steps=50, seed=0, params=None):
    params = params or make_params(seed)
    opt = opt_cls(params, **kwargs)
    grads = quadratic_stream(params, steps, seed + 1)
    for step in range(steps):
        for p, gr in zip(params, grads(step)):
            p.grad = gr
        opt.step()
    return params, opt


@pytest.mark.parametrize("betas,wd", [((0.9, 0.999), 0.0), ((0.8, 0.95), 0.0), ((0.9, 0.99), 0.1)])
def test_adam_as_memory_is_adam_step_for_step(betas, wd):
    """NL App. B: the l2-memory formulation reproduces torch.optim.Adam (AdamW with decay), float64."""
    ours, ref = make_params(), make_params()
    kw = dict(lr=1e-2, betas=betas, eps=1e-8, weight_decay=wd)
    a = AdamAsMemory(ours, **kw)
    b = (torch.optim.AdamW if wd else torch.optim.Adam)(ref, **kw)
    grads = quadratic_stream(ours, 50, 1)
    for step in range(50):
        for p, q, gr in zip(ours, ref, grads(step)):
            p.grad, q.grad = gr.clone(), gr.clone()
        a.step()
        b.step()
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13, msg=f"step {step}")


def test_l2_memory_write_is_the_discounted_mean():
    torch.manual_seed(0)
    stream = torch.randn(20, 3, dtype=torch.float64)
    mem, z, beta = torch.zeros(3, dtype=torch.float64), 0.0, 0.7
    for v in stream:
        z = l2_memory_write(mem, z, v, beta)
    w = torch.tensor([(1 - beta) * beta ** (19 - i) for i in range(20)], dtype=torch.float64)
    torch.testing.assert_close(mem, (w[:, None] * stream).sum(0) / w.sum())   # argmin of Σ w_i ‖m − v_i‖²
    assert abs(z - (1 - beta ** 20)) < 1e-12


def test_dmgd_linear_memory_is_sgd_momentum():
    """With the MLP removed, DMGD's memory is the linear momentum of NL §4 = torch SGD(momentum)."""
    ours, opt = run(DMGD, dict(lr=0.05, momentum=0.9, hidden=0, inner_lr=1.0, normalize=False, update_rms=0.0))
    ref, _ = run(torch.optim.SGD, dict(lr=0.05, momentum=0.9))
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_dmgd_memory_learns_and_descends():
    params, opt = run(DMGD, dict(lr=0.5, momentum=0.9, hidden=8, inner_lr=0.1), steps=60)
    state = opt.state[params[1]]
    assert state["w1"].shape == (8, 3) and state["w2"].shape == (3, 8)
    start = make_params()
    targets = quadratic_stream(start, 1, 1)
    # distance to the quadratic's minimum shrank for every tensor
    grads_now = quadratic_stream(params, 1, 1)(0)
    grads_start = targets(0)
    assert sum(g.norm() for g in grads_now) < 0.5 * sum(g.norm() for g in grads_start)
    assert all(torch.isfinite(s).all() for st in opt.state.values() for s in st.values() if torch.is_tensor(s))


def test_precond_momentum_without_preconditioner_is_dampened_heavy_ball():
    ours, _ = run(PreconditionedMomentum, dict(lr=0.1, momentum=0.8, precond="none"))
    ref, _ = run(torch.optim.SGD, dict(lr=0.1 * 0.2, momentum=0.8, dampening=0.0))
    # m ← α m + (1 − α) g equals SGD's buf ← α buf + g scaled by (1 − α)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_delta_momentum_erases_along_the_gradient():
    """Eq. 48–49 with α = γ = 1: m(I − ĝĝᵀ) removes the memory's component along g before the write."""
    p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = DeltaMomentum([p], lr=1.0, momentum=0.5, precond="none", delta=1.0)
    p.grad = torch.tensor([1.0, 2, 0, 0, 1, 0], dtype=torch.float64)
    opt.step()
    m = opt.state[p]["momentum_buffer"].clone()
    g2 = torch.tensor([0.0, 1, 1, 0, 0, 3], dtype=torch.float64)
    p.grad = g2
    opt.step()
    g_hat = g2 / g2.norm()
    expected = 0.5 * m - (m @ g_hat) * g_hat + 0.5 * g2
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], expected)
    # delta=0 is the plain preconditioned momentum
    a, _ = run(DeltaMomentum, dict(lr=0.01, delta=0.0))
    b, _ = run(PreconditionedMomentum, dict(lr=0.01))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_delta_momentum_matrix_keys_are_rows():
    p = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    opt = DeltaMomentum([p], lr=1.0, momentum=0.9, precond="none", delta=0.5)
    torch.manual_seed(1)
    g1, g2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    p.grad = g1
    opt.step()
    m = opt.state[p]["momentum_buffer"].clone()
    p.grad = g2
    opt.step()
    expected = m @ (0.9 * torch.eye(4, dtype=torch.float64) - 0.5 * g2.T @ g2 / g2.pow(2).sum()) + 0.1 * g2
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], expected)


@pytest.mark.parametrize("cls,kwargs,match", [
    (AdamAsMemory, dict(lr=-1.0), "lr"),
    (AdamAsMemory, dict(betas=(1.0, 0.9)), "beta1"),
    (AdamAsMemory, dict(betas=(0.9, -0.1)), "beta2"),
    (PreconditionedMomentum, dict(momentum=1.0), "momentum"),
    (PreconditionedMomentum, dict(precond="shampoo"), "precond"),
    (DeltaMomentum, dict(delta=1.5), "delta"),
    (DMGD, dict(momentum=-0.1), "momentum"),
    (DMGD, dict(inner_lr=0.0), "inner_lr"),
    (DMGD, dict(lr=-3e-3), "lr"),
])
def test_bad_hyper_parameters_are_rejected(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.zeros(2, 2, requires_grad=True)], **kwargs)
