"""Performance harness (`hopelm bench`): training tokens/s, prefill time, decode latency and state
size vs context, matmul peak and MFU, for every registry model in one run (EVALUATION.md §6)."""
from hopelm.bench.harness import add_arguments, run_bench

__all__ = ["add_arguments", "run_bench"]
