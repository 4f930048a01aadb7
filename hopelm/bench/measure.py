"""Timing primitives of the benchmark harness: a clock, memory high-water marks, the matmul peak,
FLOP counting, the size of a model state, the device's and checkout's names, and the guard that
turns an over-budget or out-of-memory measurement into a recorded skip instead of a crash.
Nothing here knows about models or configs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a barrier the clock measures the launch, not the work.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls (allocator, caches)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def memory_kind(device: torch.device) -> str:
    """What `peak_memory_bytes` means on this device (it is recorded in the JSON)."""
    if device.type == "cuda":
        return "cuda max_memory_allocated during the measurement"
    return "process RSS high-water mark (ru_maxrss) so far in the run; monotone, not per measurement"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024   # bytes on macOS, KiB on Linux


def matmul_peak(device: torch.device, n: int, dtype: torch.dtype, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of an n x n x n matmul: the ceiling MFU is measured against on this very device.
    The fastest repeat is taken, since a peak is the best the device reached."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = min(timed(lambda: a @ b, device, warmup=2, repeats=repeats))
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "seconds": best, "gflops": 2 * n ** 3 / best / 1e9}


# torch counts the CUDA attention kernels but not the fused CPU one; count it the same way
# (as torch does, the causal mask's saving is not subtracted).
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *args, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v),
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` as torch's FlopCounterMode sees them: matmuls, convolutions and
    attention (elementwise work, e.g. the optimizer's, is not counted)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def state_nbytes(state: Any) -> int:
    """Bytes of every tensor reachable from a model state (dataclasses, lists, tuples, dicts): its
    logical size (a view counts its own elements, not the buffer behind it). A tensor reachable
    twice (e.g. a KV cache kept as a block's start state) counts once."""
    seen: set[tuple[int, int]] = set()

    def walk(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            key = (x.data_ptr(), x.nbytes)
            if key in seen:
                return 0
            seen.add(key)
            return x.nbytes
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return sum(walk(getattr(x, f.name)) for f in dataclasses.fields(x))
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        return 0

    return walk(state)


def is_oom(e: BaseException) -> bool:
    # CUDA raises OutOfMemoryError; the CPU allocator raises a RuntimeError saying it "can't allocate".
    text = str(e).lower()
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text \
        or "can't allocate memory" in text


class Sweep:
    """Runs one measurement per length, smallest first, each guarded: a measurement whose
    estimated wall time exceeds `budget` seconds, or that runs out of memory, becomes a row with a
    `skipped` reason, and every longer length after it is skipped too.

    `cost` is each length's worst-case cost (quadratic attention). The first estimate scales the
    last wall time by the growth of `cost`; once two lengths are measured, by that growth raised
    to the exponent the two measurements showed, clamped to [floor, 1] (a recurrent model's time
    grows more slowly than a quadratic worst case, and a full table should not skip it for that)."""

    def __init__(self, budget: float, device: torch.device, floor: float = 1.0):
        self.budget, self.device, self.floor = budget, device, floor
        self.history: list[tuple[float, float]] = []   # (cost, wall seconds) of each measured length
        self.stopped: str | None = None

    def estimate(self, cost: float) -> float | None:
        if not self.history:
            return None
        c1, t1 = self.history[-1]
        p = 1.0
        if len(self.history) >= 2:
            c0, t0 = self.history[-2]
            if c1 > c0 and t0 > 0 and t1 > 0:
                p = min(1.0, max(self.floor, math.log(t1 / t0) / math.log(c1 / c0)))
        return t1 * (cost / c1) ** p

    def run(self, measure: Callable[[], dict[str, Any]], cost: float, blank: dict[str, Any]) -> dict[str, Any]:
        if self.stopped:
            return {**blank, "skipped": f"skipped because a shorter length was ({self.stopped})"}
        estimate = self.estimate(cost)
        if estimate is not None and estimate > self.budget:
            self.stopped = f"estimated {estimate:.0f}s > --max-seconds {self.budget:g}"
            return {**blank, "skipped": self.stopped}
        start = time.perf_counter()
        try:
            row = measure()
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            self.stopped = "out of memory"
            row = {**blank, "skipped": self.stopped}
        finally:
            gc.collect()   # drop the failed step's tensors before the next measurement
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.history.append((cost, time.perf_counter() - start))
        return {**blank, **row, "skipped": row.get("skipped")}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return f"{platform.machine()} CPU ({os.cpu_count()} cores)"


def git_commit() -> str | None:
    """HEAD of the checkout hopelm runs from, "-dirty" when tracked files differ; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=here).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
