"""The small Python API the CLI itself uses."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hopelm.config import ConfigError, config_from_dict, load_config
from hopelm.data import get_tokenizer, tokenizer_from_dict
from hopelm.models import LM, list_models, model_from_config
from hopelm.train.checkpoint import latest_checkpoint, load_checkpoint

__all__ = ["build_model", "list_models", "load"]


def build_model(name: str = "transformer", preset: str = "tiny", **overrides: Any) -> LM:
    """Build an untrained model: the preset's model section, `name`, then model-field overrides
    (`build_model("transformer", d_model=64, vocab_size=256)`). vocab_size defaults to the
    preset tokenizer's vocabulary."""
    cfg = load_config(preset, overrides={"model.name": name, **{f"model.{k}": v for k, v in overrides.items()}})
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = get_tokenizer(cfg.data.tokenizer).vocab_size
    return model_from_config(cfg.model)


def load(checkpoint_dir: str | Path, device: str | torch.device = "cpu"):
    """Load a trained model and its tokenizer from a checkpoint (or a run directory, whose latest
    checkpoint is used). Returns (model in eval mode, tokenizer)."""
    path = latest_checkpoint(checkpoint_dir)
    if path is None:
        raise ConfigError(f"No checkpoint found in {str(checkpoint_dir)!r}.")
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt.config)
    model = model_from_config(cfg.model)
    model.load_state_dict(ckpt.model_state)
    model.to(device).eval()
    model.run_config = cfg  # the resolved config the model was trained with
    return model, tokenizer_from_dict(ckpt.meta["tokenizer"])
