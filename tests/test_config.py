from __future__ import annotations

import pytest

from hopelm.config import ConfigError, config_from_dict, list_presets, load_config, parse_override


def test_presets_resolve_and_validate():
    assert {"tiny", "small"} <= set(list_presets())
    for name in list_presets():
        cfg = load_config(name)
        assert cfg.model.d_model % cfg.model.n_heads == 0


def test_overrides_are_typed():
    cfg = load_config("tiny", overrides=["--train.max_steps=7", "--optim.lr=1e-4", "--model.tie_embeddings=false",
                                         "--data.path=some/file.txt", "--optim.lr=2"])
    assert cfg.train.max_steps == 7 and cfg.model.tie_embeddings is False
    assert cfg.data.path == "some/file.txt"
    assert cfg.optim.lr == 2.0 and isinstance(cfg.optim.lr, float)  # ints are accepted for floats


@pytest.mark.parametrize("override, key", [
    ("--train.max_stepz=3", "train.max_stepz"),
    ("--trian.max_steps=3", "trian"),
    ("--train.max_steps=abc", "train.max_steps"),
    ("--train.max_steps=1.5", "train.max_steps"),
    ("--model.tie_embeddings=1", "model.tie_embeddings"),
    ("--model.d_model=130", "model.d_model"),
    ("--optim.lr=-1", "optim.lr"),
    ("--optim.beta2=1.0", "optim.beta2"),
    ("--train.max_steps=0", "train.max_steps"),
    ("--train.dtype=float8", "train.dtype"),
    ("--model.proj_init_std=-0.1", "model.proj_init_std"),
    ("--model.memory_max_norm=-1", "model.memory_max_norm"),
    ("--model.projection_rate=0", "model.projection_rate"),
    ("--model.projection_rate=1.5", "model.projection_rate"),
    ("--model.eta_init=0", "model.eta_init"),
    ("--model.alpha_init=[1.0]", "model.alpha_init"),
    ("--model.alpha_init=[0.5,0.9,0.99]", "model.alpha_init"),
    ("--model.alpha_init=[]", "model.alpha_init"),
])
def test_bad_keys_and_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny", overrides=[override])


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="Unknown preset"):
        load_config("huge-nonexistent")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(file=str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd_model = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(file=str(bad))


def test_file_config_and_round_trip(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[model]\nd_model = 64\nn_heads = 2\n[train]\nmax_steps = 3\n[models.transformer]\nn_layers = 1\n')
    cfg = load_config(file=str(f))
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.train.max_steps) == (64, 1, 3)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_override_syntax():
    assert parse_override("--train.seed=3") == ("train.seed", 3)
    assert parse_override("--data.path=a b") == ("data.path", "a b")
    with pytest.raises(ConfigError):
        parse_override("--seed")


@pytest.mark.parametrize("overrides, words", [
    (["--train.compile=true", "--train.compile_mixers=true"], "not both"),
    (["--train.compile_mixers=true", "--model.cms_meta_grad=exact"], "double backward"),
    (["--train.cuda_graph=true", "--train.compile_mixers=true"], "cannot be combined"),
    (["--train.cuda_graph=true", "--train.grad_accum=2"], "cannot be combined"),
])
def test_compile_options_that_cannot_work_together_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config("tiny", overrides=overrides)
    load_config("tiny", overrides=overrides[:1])          # each alone is fine
