"""Loss, perplexity and bits per byte of a model on fixed evaluation windows."""
from __future__ import annotations

import contextlib
import math

import torch


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, windows: list[tuple[torch.Tensor, torch.Tensor]],
                  device: torch.device, dtype_ctx=contextlib.nullcontext) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats) over the windows, and the number of tokens scored."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in windows:
        x, y = x.to(device), y.to(device)
        with dtype_ctx():
            loss = model(x, y).loss
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1), count


def bits_per_byte(loss_nats: float, tokens: int, n_bytes: int) -> float:
    """Convert a per-token loss to bits per UTF-8 byte of the scored text."""
    return loss_nats * tokens / (math.log(2) * max(n_bytes, 1))


def window_bytes(windows, tokenizer) -> int:
    """UTF-8 bytes of the target text of the windows (what the scored tokens spell)."""
    if tokenizer.name == "bytes":
        return sum(y.numel() for _, y in windows)
    return sum(len(tokenizer.decode(row.tolist()).encode("utf-8")) for _, y in windows for row in y)
