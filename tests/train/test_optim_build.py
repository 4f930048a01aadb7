from __future__ import annotations

import math


from hopelm.config import ModelConfig, OptimConfig
from hopelm.models import model_from_config
from hopelm.optim.build import build_optimizer, lr_at, param_groups


def test_no_decay_on_norms_gains_and_embeddings():
    model = model_from_config(ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and "norm" not in names[id(p)] for p in decay["params"])
    assert id(model.embed.weight) in {id(p) for p in no_decay["params"]}
    assert all(p.dim() == 1 for p in no_decay["params"] if p is not model.embed.weight)
    n_total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == n_total
    opt = build_optimizer(model, OptimConfig())
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_warmup_then_cosine():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert math.isclose(lr_at(0, cfg, 110), 0.1) and math.isclose(lr_at(9, cfg, 110), 1.0)
    assert math.isclose(lr_at(10, cfg, 110), 1.0)
    assert math.isclose(lr_at(60, cfg, 110), 0.55)        # halfway down the cosine
    assert math.isclose(lr_at(110, cfg, 110), 0.1) and math.isclose(lr_at(500, cfg, 110), 0.1)
    lrs = [lr_at(s, cfg, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
