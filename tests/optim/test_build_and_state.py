from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hopelm.config import ConfigError, ModelConfig, OptimConfig, load_config
from hopelm.models import model_from_config
from hopelm.optim.build import MultiOptimizer, build_optimizer, split_params
from hopelm.optim.m3 import M3
from hopelm.optim.memories import DMGD, AdamAsMemory, DeltaMomentum, PreconditionedMomentum
from hopelm.train import trainer
from hopelm.train.checkpoint import load_checkpoint, save_checkpoint
from tests.train.conftest import SMALL

NAMES = ["adamw", "adam_memory", "muon", "m3", "dmgd", "precond_momentum", "delta_momentum"]


def tiny_model(tie: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    return model_from_config(ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=2,
                                         tie_embeddings=tie))


def batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randint(0, 48, (2, 16), generator=g)
    return x, torch.roll(x, -1, 1)


def train_steps(model, opt, steps, lr=3e-3):
    for s in steps:
        for group in opt.param_groups:   # what the trainer does every step
            group["lr"] = lr * (1 - s / 40)
        x, y = batch(s)
        model(x, y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("tie", [True, False])
def test_split_puts_embeddings_head_and_vectors_on_adamw(tie):
    model = tiny_model(tie)
    hidden, head, rest = split_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 and names[id(p)].startswith("blocks.") for p in hidden)
    assert id(model.embed.weight) in {id(p) for p in rest}
    assert [names[id(p)] for p in head] == ([] if tie else ["head.weight"])
    assert sum(p.numel() for p in hidden + head + rest) == sum(p.numel() for p in model.parameters())
    opt = build_optimizer(model, OptimConfig(name="m3"))
    assert isinstance(opt, MultiOptimizer) and isinstance(opt.optimizers[0], M3)
    assert [g["weight_decay"] for g in opt.param_groups] == ([0.1, 0.0] if tie else [0.1, 0.1, 0.0])


def test_each_name_builds_its_optimizer():
    kinds = {"adam_memory": AdamAsMemory, "m3": M3, "dmgd": DMGD, "precond_momentum": PreconditionedMomentum,
             "delta_momentum": DeltaMomentum}
    for name in NAMES:
        opt = build_optimizer(tiny_model(), OptimConfig(name=name))
        hidden = opt.optimizers[0] if isinstance(opt, MultiOptimizer) else opt
        if name in kinds:
            assert type(hidden) is kinds[name]
    muon = build_optimizer(tiny_model(), OptimConfig(name="muon")).optimizers[0]
    assert type(muon) is getattr(torch.optim, "Muon", type(muon))
    assert type(build_optimizer(tiny_model(), OptimConfig(name="muon", muon_impl="own")).optimizers[0]).__module__ \
        == "hopelm.optim.muon"


def test_lr_scale_multiplies_only_during_the_step():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(name="dmgd", hidden_lr_scale=0.0 + 1e-9))
    before = [p.detach().clone() for p in split_params(model)[0]]
    train_steps(model, opt, range(1))
    assert all(g["lr"] == 3e-3 for g in opt.param_groups)
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(before, split_params(model)[0]))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_bit_identically(name, tmp_path):
    cfg = OptimConfig(name=name, m3_f=3)
    model = tiny_model()
    opt = build_optimizer(model, cfg)
    train_steps(model, opt, range(4))
    # a: continue in memory; b: rebuild from state_dict(); c: rebuild through a checkpoint on disk
    twin = copy.deepcopy(model)
    opt_b = build_optimizer(twin, cfg)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, config={}, meta={"step": 4}, rng={})
    ck = load_checkpoint(tmp_path / "ck")
    third = tiny_model(seed=1)
    third.load_state_dict(ck.model_state)
    opt_c = build_optimizer(third, cfg)
    opt_c.load_state_dict(ck.optimizer_state)
    for m, o in ((model, opt), (twin, opt_b), (third, opt_c)):
        train_steps(m, o, range(4, 9))
    ref = model.state_dict()
    for other in (twin, third):
        assert all(torch.equal(ref[k], v) for k, v in other.state_dict().items())


@pytest.mark.parametrize("override,key", [
    ("--optim.lr=-0.01", "optim.lr"), ("--optim.beta1=1.0", "optim.beta1"), ("--optim.beta2=-0.1", "optim.beta2"),
    ("--optim.momentum=1.0", "optim.momentum"), ("--optim.m3_beta3=1.5", "optim.m3_beta3"),
    ("--optim.m3_f=0", "optim.m3_f"), ("--optim.ns_steps=0", "optim.ns_steps"),
    ("--optim.m3_alpha=-1", "optim.m3_alpha"), ("--optim.delta=2", "optim.delta"),
    ("--optim.name=lion", "optim.name"), ("--optim.m3_accumulate=mean", "optim.m3_accumulate"),
    ("--optim.muon_impl=jax", "optim.muon_impl"), ("--optim.dmgd_lr=0", "optim.dmgd_lr"),
])
def test_bad_hyper_parameters_in_the_config_are_rejected(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config("tiny", overrides=[override])
    assert str(err.value).count(".") <= 3 and str(err.value).endswith(".")   # one sentence


@pytest.mark.parametrize("name", NAMES[1:])   # adamw is covered by tests/train
def test_each_optimizer_trains_the_tiny_model(name, tmp_path):
    overrides = SMALL + [f"--optim.name={name}", "--train.max_steps=20", "--train.eval_interval=0",
                         "--checkpoint.interval=0", f"--train.out_dir={tmp_path / name}"]
    cfg, tok, _ = trainer.prepare_run("tiny", None, overrides)
    out = trainer.train(cfg, tok)
    losses = [out["losses"][s] for s in range(20)]
    assert all(np.isfinite(losses)) and out["skipped_steps"] == 0
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.8      # from ~5.5 to ~3.6 in 20 steps
    assert out["metrics"]["val_loss"] < 4.5


@pytest.mark.parametrize("name", ["m3", "muon"])
def test_trainer_resume_with_a_split_optimizer_is_exact(name, tmp_path):
    base = SMALL + [f"--optim.name={name}", "--optim.m3_f=3", "--train.eval_interval=0"]

    def go(out, *extra, resume=None):
        cfg, tok, ck = trainer.prepare_run("tiny", None, base + [f"--train.out_dir={tmp_path / out}", *extra], resume)
        return trainer.train(cfg, tok, ck)
    full = go("full", "--train.max_steps=8", "--checkpoint.interval=4")
    resumed = go("resumed", resume=str(tmp_path / "full" / "step_000004"))
    assert [resumed["losses"][s] for s in range(4, 8)] == [full["losses"][s] for s in range(4, 8)]


def test_thin_and_3d_weights_stay_on_adamw():
    model = tiny_model()
    model.blocks[0].conv = torch.nn.Conv1d(32, 32, 4, groups=32, bias=False)   # weight [32, 1, 4]
    model.blocks[0].kernel = torch.nn.Parameter(torch.randn(32, 4))
    hidden, other, _ = split_params(model)
    ids = {id(p) for p in other}
    assert id(model.blocks[0].conv.weight) in ids and id(model.blocks[0].kernel) in ids
    assert all(p.dim() == 2 and min(p.shape) > 4 for p in hidden)
    build_optimizer(model, OptimConfig(name="muon"))    # torch.optim.Muon would reject a 3-D weight
