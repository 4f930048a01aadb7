"""Where a non-finite training step comes from (`--train.trace_nonfinite=true`).

The trainer skips a step whose loss or gradient is NaN or infinite and names the parameters with
bad gradients; that says where the damage landed, not which operation made it. This re-runs the
step's batches once with autograd's anomaly detection, which stops at the first backward function
that returns a NaN and reports the line of the forward that created it, and with forward hooks
that name the first module whose output is not finite. Slow (anomaly mode records a stack trace per
operation), so it runs once per training run, on the first bad step.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _forward_line(caught: list[warnings.WarningMessage]) -> str | None:
    """The innermost frame outside torch of anomaly mode's 'Traceback of forward call' warning,
    'file:line: code', followed by the innermost frame when that is inside torch (`1.0 / x` is
    recorded at torch/_tensor.py's __rtruediv__, which alone would not say whose division it was)."""
    for w in caught:
        text = str(w.message)
        if "Traceback of forward call" not in text:
            continue
        lines = [s.strip() for s in text.splitlines()]
        frames = [i for i, s in enumerate(lines) if s.startswith("File ")]
        if not frames:
            continue

        def describe(i: int) -> str:
            where = lines[i].removeprefix("File ").replace('", line ', ":").strip('"').split(", in ")[0]
            code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith(("(", "File ")) else ""
            return f"{where}: {code}".rstrip(": ")

        in_torch = lambda i: f"{os.sep}torch{os.sep}" in lines[i]
        ours = [i for i in frames if not in_torch(i)]
        if ours and ours[-1] != frames[-1]:
            return f"{describe(ours[-1])} (inside torch: {describe(frames[-1])})"
        return describe(frames[-1])
    return None


def trace_non_finite(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     autocast: Callable[[], Any]) -> str:
    """Re-run forward + backward of `batches` under anomaly detection; one sentence on what it found.
    Gradients are left accumulated: the caller clears them."""
    first_bad: list[str] = []

    def hook(name: str):
        def check(module, args, out):
            if not first_bad and any(not bool(torch.isfinite(t).all()) for t in _tensors(out)
                                     if t.is_floating_point()):
                first_bad.append(name or "the model's output")
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    error = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autograd.detect_anomaly(check_nan=True):
                for x, y in batches:
                    with autocast():
                        loss = model(x, y).loss
                    loss.backward()
    except RuntimeError as e:
        error = str(e).splitlines()[0]
    finally:
        for h in handles:
            h.remove()
    parts = [f"forward: the first non-finite output came from {first_bad[0]}" if first_bad
             else "forward: every module's output was finite"]
    if error:
        line = _forward_line(caught)
        parts.append(f"backward: {error}" + (f" The forward operation it differentiates: {line}" if line else ""))
    else:
        parts.append("backward: no function returned a NaN on the re-run (an infinity, or a step that does "
                     "not repeat, e.g. nondeterministic GPU kernels)")
    return "Trace of the non-finite step: " + "; ".join(parts)
