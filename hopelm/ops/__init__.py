"""Pure tensor functions (SPEC §2–4), each as naive_* (per-token oracle), chunk_* (parallel) and step_* (decoding)."""
from __future__ import annotations

from .conv import chunk_conv, naive_conv, step_conv
from .decay import chunk_decay, naive_decay, step_decay
from .delta import chunk_delta, naive_delta, step_delta
from .memory import MemoryState, chunk_memory, naive_memory, read_memory, step_memory

__all__ = [
    "MemoryState", "naive_memory", "chunk_memory", "step_memory", "read_memory",
    "naive_delta", "chunk_delta", "step_delta",
    "naive_decay", "chunk_decay", "step_decay",
    "naive_conv", "chunk_conv", "step_conv",
]
