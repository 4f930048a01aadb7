"""End-to-end CLI: train -> eval -> sample -> info -> resume, and one-sentence errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hopelm.cli import main
from tests.train.conftest import SMALL


@pytest.fixture(autouse=True)
def token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HOPELM_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))


def test_train_eval_sample_info(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", *SMALL, "--train.max_steps=4", f"--train.out_dir={run}"])
    assert "done: transformer step 4" in capsys.readouterr().out

    main(["eval", str(run / "final"), "--batches=2", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "validation" and result["tokens"] > 0
    assert result["bits_per_byte"] == pytest.approx(result["loss"] / 0.6931471805599453, rel=1e-6)  # bytes

    main(["sample", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "3"])
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first.rstrip("\n")) >= len("ROMEO:")
    main(["sample", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "3"])
    assert capsys.readouterr().out == first                     # seeded sampling is reproducible

    main(["info", str(run / "final"), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["model"]["vocab_size"] == 256 and info["parameters"]["total"] > 0

    main(["train", "--resume", str(run), "--train.max_steps=6"])   # continue a finished run further
    assert "done: transformer step 6" in capsys.readouterr().out


def test_info_preset_lists_components(capsys):
    main(["info", "--preset", "tiny", "--model.n_layers=1"])
    out = capsys.readouterr().out
    assert '"n_layers": 1' in out and "mixer" in out and "non_embedding" in out and "device:" in out


@pytest.mark.parametrize("args, message", [
    (["train", "--train.max_stepz=3"], "Unknown config key 'train.max_stepz'"),
    (["train", "--model.d_model=130"], "model.d_model=130 must be divisible"),
    (["train", "--bogus"], "Unrecognised argument '--bogus'"),
    (["eval", "/nonexistent/ckpt"], "/nonexistent/ckpt"),
])
def test_errors_are_one_sentence(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "hopelm", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "eval", "sample", "info", "tokenizer"):
        assert command in out.stdout


def test_python_api(tmp_path):
    import torch

    import hopelm
    assert "transformer" in hopelm.list_models()
    model = hopelm.build_model("transformer", preset="tiny", d_model=64, n_heads=2, n_layers=1)
    assert model.cfg.vocab_size == 256 and model.cfg.d_model == 64
    with pytest.raises(hopelm.ConfigError, match="model.d_modl"):
        hopelm.build_model("transformer", d_modl=64)
    main(["train", *SMALL, "--train.max_steps=2", f"--train.out_dir={tmp_path / 'r'}"])
    loaded, tokenizer = hopelm.load(tmp_path / "r")
    assert not loaded.training and tokenizer.vocab_size == 256
    idx = torch.tensor([tokenizer.encode("To be")])
    logits, loss, state = loaded(idx, targets=idx)
    assert logits.shape == (1, 5, 256) and loss is not None and len(state) == 2


def test_levels_of_a_hope_checkpoint(tmp_path, capsys):
    run = tmp_path / "hope"
    main(["train", *SMALL, "--model.name=hope", "--model.chunk_size=4", "--model.projection_chunk_size=4",
          "--model.cms_periods=[8,16,0]", "--model.cms_lrs=[0.01,0.01,0.0]", "--train.max_steps=2",
          f"--train.out_dir={run}"])
    capsys.readouterr()
    main(["levels", str(run), "--tokens", "48", "--json", "--plot", str(tmp_path / "levels.png")])
    rows = {r["component"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["block 0: M_memory"]["frequency"] == 1.0
    assert rows["block 0: CMS level 0"]["period"] == 8.0 and rows["block 0: CMS level 0"]["updates"] == 5
    assert rows["block 1: CMS level 1"]["period"] == 16.0 and rows["block 1: CMS level 1"]["updates"] == 2
    assert rows["block 0: CMS level 2 (static)"]["frequency"] == 0.0
    assert (tmp_path / "levels.png").stat().st_size > 0
    main(["sample", str(run), "--prompt", "KING", "--max-new-tokens", "20"])   # recurrent + CMS decoding
    assert capsys.readouterr().out.startswith("KING")
