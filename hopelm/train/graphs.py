"""A training step's forward and backward captured once as a CUDA graph and replayed.

Why: the recurrent models loop over chunks in Python, so on a GPU a step is a long series of small
kernels and is bound by their launches (hope at the gpu125m preset: ~42,000 aten calls per block,
docs/results.md "On a GPU"). A CUDA graph records the kernels of one step and replays them with
one launch; the same kernels run on the same memory, so a replayed step computes what the eager
step computes. It works here because nothing in a forward waits on the host: shapes are fixed,
the CMS block loop is driven by Python integers, its inner gradients (`autograd.grad`) run on the
capturing stream, and the memories' norm bound always projects on a GPU (ops/memory.py). That no
model reads a device value on the host in a training step is tested on the CPU
(tests/train/test_graphs.py); that capture and replay equal eager steps, on a GPU (tests/gpu).

What stays outside the graph: the optimizer step, gradient clipping and the finite-loss check
(they read the gradients the replay wrote). The gradients are the graph's own tensors: the caller
must not set them to None after capture (`zero_grad` is unnecessary: every replay overwrites them).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class GraphedStep:
    """`step(x, y)` = `model(x, y).loss.backward()` replayed from a graph; returns the loss tensor
    (the graph's static output: read it before the next call). Inputs must keep the shapes of the
    batch it was captured with."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 autocast_dtype: torch.dtype | None = None, warmup: int = 2):
        if x.device.type != "cuda":
            raise ValueError(f"A CUDA graph needs CUDA tensors; the batch is on {x.device}.")
        self.model, self.autocast_dtype = model, autocast_dtype
        self.x, self.y = x.clone(), y.clone()
        # Warm-up on a side stream (PyTorch's CUDA-graph recipe): lazy initialisations (cuBLAS
        # handles, workspaces, autograd's accumulators) must happen before capture, not inside it.
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                model.zero_grad(set_to_none=True)
                self._loss().backward()
        torch.cuda.current_stream(x.device).wait_stream(side)
        model.zero_grad(set_to_none=True)      # capture allocates the gradients in the graph's pool
        torch.cuda.empty_cache()               # give the warm-up's activations back before capture
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self._loss()
            self.loss.backward()

    def _loss(self) -> torch.Tensor:
        # The autocast cache must be off inside a graph (its casts would outlive the capture).
        ctx = (torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)
               if self.autocast_dtype is not None else contextlib.nullcontext())
        with ctx:
            return self.model(self.x, self.y).loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != self.x.shape or y.shape != self.y.shape:
            raise ValueError(f"The CUDA graph was captured for batches of shape {tuple(self.x.shape)}; "
                             f"got {tuple(x.shape)}.")
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.loss
