"""Length-generalization curves of several models from their `hopelm eval niah|babilong` JSON files.

    python benchmarks/length_curves.py benchmarks/results/eval_babilong_*.json --out babilong_curves.png

Per model and row (needle kind, or the bAbI task set), accuracy is averaged over depths or tasks
within each seed and then over seeds (`hopelm.eval.runner.length_curve`); the script prints one
Markdown table (mean ± std over seeds, per length) and draws accuracy against context length, one
line per model and row, error bars = std over seeds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hopelm.eval.runner import length_curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON files written by `hopelm eval niah|babilong --out`")
    p.add_argument("--out", default=None, help="figure file (.png)")
    args = p.parse_args()
    curves = []                        # (label, seeds, {length: summary})
    for path in args.results:
        r = json.loads(Path(path).read_text())
        if r.get("task") not in ("niah", "babilong"):
            raise SystemExit(f"{path}: a niah or babilong result is needed, not {r.get('task')!r}.")
        for run in r["runs"]:
            curves.append((f"{r['model']} {run['row']}", r["seeds"], length_curve(run["per_seed"])))
    lengths = sorted({L for _, _, c in curves for L in c})
    print("| model, row | seeds | " + " | ".join(f"L={L}" for L in lengths) + " |")
    print("|---|---|" + "---|" * len(lengths))
    for label, seeds, c in curves:
        cells = [f"{c[L]['mean']:.3f}±{c[L]['std']:.3f}" if L in c else "" for L in lengths]
        print(f"| {label} | {seeds} | " + " | ".join(cells) + " |")
    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5.5, 3.5), layout="constrained")
        for label, seeds, c in curves:
            Ls = list(c)
            ax.errorbar([lengths.index(L) for L in Ls], [c[L]["mean"] for L in Ls], yerr=[c[L]["std"] for L in Ls],
                        marker="o", capsize=3, label=f"{label} ({seeds} seeds)")
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        ax.set_xlabel("context length (tokens)"); ax.set_ylabel("exact match"); ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
