"""The benchmark result as Markdown tables and matplotlib plots (read from the JSON dict alone, so
a saved bench.json can be re-rendered)."""
from __future__ import annotations

from pathlib import Path

SKIP = "–"


def _bytes(n: int | None) -> str:
    if n is None:
        return SKIP
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""   # unreachable


def _ratio(r: float | None) -> str:
    return SKIP if r is None else f"{r:.2f}x"


def _length(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def markdown(result: dict) -> str:
    meta, peak, rows = result["meta"], result["matmul_peak"], result["models"]
    lines = [f"Device: {meta['device']}; torch {meta['torch']}, {meta['threads']} threads, {meta['precision']}; "
             f"matmul peak {peak['gflops']:,.1f} GFLOP/s ({peak['n']}³ {peak['dtype']}). "
             f"Preset `{meta['preset']}`{' (--quick)' if meta['quick'] else ''}, overrides {meta['overrides'] or 'none'}; "
             f"{meta['date']}, commit {meta['git_commit'] or 'unknown'}. Peak memory: {meta['memory']}. "
             f"{SKIP}: skipped (reason in bench.json).", "",
             "Training step (forward, backward, AdamW" + (
                 "; forward and backward replayed from a CUDA graph):" if meta["args"].get("cuda_graph") else "):"), "",
             "| model | non-emb. params | T | batch | tokens/s | vs transformer | GFLOP/s | MFU | peak memory |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for m in r["train"]:
            ok = m["skipped"] is None
            lines.append(f"| {r['model']} | {r['params_non_embedding']:,} | {m['T']} | {m['batch']} | "
                         f"{format(m['tokens_per_s'], ',.0f') if ok else SKIP} | {_ratio(m['vs_transformer'])} | "
                         f"{format(m['achieved_gflops'], ',.1f') if ok else SKIP} | "
                         f"{format(m['mfu'], '.1%') if ok else SKIP} | {_bytes(m['peak_memory_bytes'])} |")
    for section, title, cell in (
            ("prefill", "Prefill time, batch 1, no grad (vs transformer):",
             lambda m: f"{m['seconds'] * 1e3:,.1f} ms ({_ratio(m['vs_transformer'])})"),
            ("decode", "Decode latency per token after L tokens of context, and the state's size:",
             lambda m: f"{m['ms_per_token']:.2f} ms, {_bytes(m['state_bytes'])} ({_ratio(m['vs_transformer'])})")):
        lengths = sorted({m["L"] for r in rows for m in r[section]})
        if not lengths:   # skipped with --prefill none / --decode none
            continue
        lines += ["", title, "", "| model | " + " | ".join(f"L={_length(n)}" for n in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for r in rows:
            by_len = {m["L"]: m for m in r[section]}
            cells = [cell(by_len[n]) if n in by_len and by_len[n]["skipped"] is None else SKIP for n in lengths]
            lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PLOTS = (  # file, section, length key, value, y label, log y
    ("train_throughput.png", "train", "T", "tokens_per_s", "training tokens/s", False),
    ("prefill.png", "prefill", "L", "seconds", "prefill time (s)", True),
    ("decode_latency.png", "decode", "L", "ms_per_token", "decode latency (ms/token)", True),
    ("decode_state.png", "decode", "L", "state_bytes", "state size (bytes)", True),
)


def plot(result: dict, out: Path) -> list[Path]:
    """One PNG per figure of EVALUATION.md §6; every model is a line, skipped points are left out."""
    import matplotlib
    matplotlib.use("Agg")   # no display: write files only
    import matplotlib.pyplot as plt

    paths = []
    for name, section, key, value, label, logy in PLOTS:
        if not any(r[section] for r in result["models"]):
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for r in result["models"]:
            points = [(m[key], m[value]) for m in r[section] if m["skipped"] is None]
            if points:
                ax.plot(*zip(*points), marker="o", label=r["model"])
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("sequence length T" if key == "T" else "context length L (tokens)")
        ax.set_ylabel(label)
        ax.set_title(result["meta"]["device"], fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)
    return paths
