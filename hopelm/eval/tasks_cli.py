"""`hopelm eval <task>`: train-then-evaluate runs of the evaluation suite (EVALUATION.md §2–4).

    hopelm eval formal --model transformer --seeds 3 --steps 1000 --out formal.json --plot formal.png

Tasks: mqar, formal, mad, niah, babilong, continual. Each prints a table (mean ± std over seeds per
bin, or ACC / F / BWT / mean a_ii per method) and writes every number, per seed, to JSON.
`hopelm eval continual-lm` (a stream of books) has its own flags: see hopelm/eval/continual_lm.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from hopelm.config import parse_override

TASKS = ("mqar", "formal", "mad", "niah", "babilong", "continual", "continual-lm")
DEFAULT_STEPS = {"mqar": 1000, "formal": 1000, "mad": 1000, "niah": 500, "babilong": 500, "continual": 200}


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x)


def _names(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _value(v: str) -> Any:
    """A --set value, read like the config's dotted overrides: a TOML literal (2, 1e-3, true,
    [0.0, 0.0]) or else a bare string."""
    return parse_override(f"model.x={v}")[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hopelm eval", description=__doc__.split("\n")[0])
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", default="transformer", help="registry name (hopelm.list_models())")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="training steps (per task for continual)")
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--plot", default=None, help="figure file (.png)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--d-model", type=int, default=None, help="model width (default 64)")
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. --set cms_lrs=[0.0,0.0,0.0] (CMS online updates off; repeatable)")
    p.add_argument("--n-test", type=int, default=None, help="test examples per bin (per class for continual)")
    p.add_argument("--data-root", default=None, help="folder holding pg19-mini/, babi/, clinc150/, banking77/")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    g = p.add_argument_group("mqar")
    g.add_argument("--vocab", type=int, default=None, help="vocabulary (mqar 8192, mad 64)")
    g.add_argument("--configs", default="64:4,128:8,256:16", help="seq_len:num_kv_pairs list")
    g.add_argument("--widths", default=None, help="comma list of d_model values to sweep")
    g = p.add_argument_group("formal")
    g.add_argument("--languages", default="parity,aa,abab,anbn,anbncn,shuffle2")
    g.add_argument("--test-bins", default="1-40,41-100")
    g = p.add_argument_group("mad")
    g.add_argument("--mad-tasks", default="selective_copy,in_context_recall,fuzzy_recall,compression,memorization")
    g.add_argument("--seq-len", type=int, default=64)
    g = p.add_argument_group("niah / babilong")
    g.add_argument("--needles", default="passkey,number,uuid")
    g.add_argument("--babi-tasks", default="1,2,3,4,5")
    g.add_argument("--train-length", type=int, default=None, help="niah 512, babilong 0")
    g.add_argument("--lengths", default=None, help="niah 512,1024,2048; babilong 0,1024,2048")
    g.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    g.add_argument("--tokenizer", default="bytes")
    g = p.add_argument_group("continual")
    g.add_argument("--dataset", default="clinc150", choices=("clinc150", "banking77"))
    g.add_argument("--methods", default="finetune,ewc,replay,joint")
    g.add_argument("--train-per-class", type=int, default=40)
    g.add_argument("--max-len", type=int, default=64)
    return p


def _fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f}±{s['std']:.3f}"


def _table(rows: list[tuple[str, dict[str, str]]], first: str) -> str:
    cols = list(dict.fromkeys(c for _, r in rows for c in r))
    width = [max(len(first), *(len(n) for n, _ in rows))] + [max(len(c), *(len(r.get(c, "")) for _, r in rows)) for c in cols]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, width))
    return "\n".join([line([first, *cols]), line(["-" * w for w in width])] +
                     [line([n, *(r.get(c, "") for c in cols)]) for n, r in rows])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from hopelm.eval import runner
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    steps = args.steps if args.steps is not None else DEFAULT_STEPS[args.task]
    root = Path(args.data_root) if args.data_root else runner.data_root()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    common = dict(model_name=args.model, seeds=args.seeds, steps=steps, batch_size=args.batch_size, lr=args.lr,
                  n_layers=args.n_layers, n_heads=args.n_heads, log=log, **overrides)
    d_model = args.d_model or 64
    runs: list[dict[str, Any]] = []
    if args.task == "mqar":
        from hopelm.eval.synthetic import MQARTask
        configs = tuple(tuple(int(x) for x in c.split(":")) for c in args.configs.split(","))
        task = MQARTask(args.vocab or 8192, configs, n_test=args.n_test or 100)
        for w in _ints(args.widths) if args.widths else (d_model,):
            log(f"mqar d_model={w}")
            runs.append(dict(runner.run_task(task, metric="token", d_model=w, **common), row=f"d_model={w}"))
    elif args.task == "formal":
        from hopelm.eval.formal import FormalTask
        bins = tuple(tuple(int(x) for x in b.split("-")) for b in args.test_bins.split(","))
        for lang in _names(args.languages):
            log(f"formal {lang}")
            runs.append(dict(runner.run_task(FormalTask(lang, test_bins=bins, n_test=args.n_test or 200),
                                             d_model=d_model, **common), row=lang))
    elif args.task == "mad":
        from hopelm.eval.synthetic import MADTask
        for kind in _names(args.mad_tasks):
            log(f"mad {kind}")
            task = MADTask(kind, args.vocab or 64, args.seq_len, n_test=args.n_test or 200)
            metric = "token" if kind == "memorization" else "exact"
            runs.append(dict(runner.run_task(task, metric=metric, d_model=d_model, **common), row=kind))
    elif args.task == "niah":
        from hopelm.eval.niah import NIAHTask
        for kind in _names(args.needles):
            log(f"niah {kind}")
            task = NIAHTask(kind, args.train_length or 512, _ints(args.lengths or "512,1024,2048"), _floats(args.depths),
                            n_test=args.n_test or 10, tokenizer=args.tokenizer, root=str(root / "pg19-mini"))
            runs.append(dict(runner.run_task(task, mode="generate", d_model=d_model, **common), row=kind))
    elif args.task == "babilong":
        from hopelm.eval.babilong import BabilongTask
        task = BabilongTask(_ints(args.babi_tasks), args.train_length or 0, _ints(args.lengths or "0,1024,2048"),
                            n_test=args.n_test or 20, tokenizer=args.tokenizer, root=str(root / "babi"),
                            pg19_root=str(root / "pg19-mini"))
        runs.append(dict(runner.run_task(task, mode="generate", d_model=d_model, **common), row=task.name))
    else:
        from hopelm.eval import continual
        data = (continual.load_clinc150 if args.dataset == "clinc150" else continual.load_banking77)(root / args.dataset)
        for method in _names(args.methods):
            log(f"continual {data.name} {method}")
            seeds = [continual.run_continual(data, method, args.model, seed=s, steps_per_task=steps,
                                             batch_size=args.batch_size, lr=args.lr, max_len=args.max_len,
                                             train_per_class=args.train_per_class, test_per_class=args.n_test or 10,
                                             d_model=args.d_model or 64, n_layers=args.n_layers, n_heads=args.n_heads,
                                             log=log, **overrides) for s in range(args.seeds)]
            runs.append({"row": method, "per_seed": seeds, "summary": continual.summarize_runs(seeds)})
    return {"task": args.task, "model": args.model, "seeds": args.seeds, "steps": steps,
            "argv": vars(args) | {"set": args.set}, "runs": runs}


def table(result: dict[str, Any]) -> str:
    if result["task"] == "continual":
        rows = []
        for r in result["runs"]:
            cells = {k: _fmt(r["summary"][k]) for k in ("ACC", "F", "BWT", "mean_diag")}
            final = [sum(s["final"][i] for s in r["per_seed"]) / len(r["per_seed"]) for i in range(len(r["per_seed"][0]["final"]))]
            diag = [sum(s["diag"][i] for s in r["per_seed"]) / len(r["per_seed"]) for i in range(len(final))]
            cells["a_ii -> a_Ti"] = " ".join(f"{d:.2f}->{f:.2f}" for d, f in zip(diag, final))
            rows.append((r["row"], cells))
        return _table(rows, "method")
    return _table([(r["row"], {b: _fmt(s) for b, s in r["summary"].items()}) for r in result["runs"]], result["task"])


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = result["runs"]
    if result["task"] == "continual":
        from hopelm.eval.continual import plot_matrix
        for r in runs:   # one heatmap per method: path-stem.method.png; the first also at path
            A = r["per_seed"][0]["matrix"]
            p = Path(path)
            plot_matrix(A, p.with_name(f"{p.stem}.{r['row']}{p.suffix}"), f"{r['row']} (seed 0)")
        plot_matrix(runs[0]["per_seed"][0]["matrix"], path, f"{runs[0]['row']} (seed 0)")
        return
    if result["task"] == "niah":   # heatmap length x depth per needle kind
        fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs) + 1, 3.2), squeeze=False, layout="constrained")
        for ax, r in zip(axes[0], runs):
            cells = {tuple(b.split(",")): s["mean"] for b, s in r["summary"].items()}
            Ls = list(dict.fromkeys(k[0] for k in cells)); ds = list(dict.fromkeys(k[1] for k in cells))
            im = ax.imshow([[cells[(L, d)] for L in Ls] for d in ds], vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(Ls)), [L[2:] for L in Ls]); ax.set_yticks(range(len(ds)), [d[2:] for d in ds])
            ax.set_xlabel("length (tokens)"); ax.set_ylabel("depth"); ax.set_title(f"{r['row']} ({result['model']})")
        fig.colorbar(im, ax=axes[0].tolist(), label="exact match")
    else:              # grouped bars: one group per row, one bar per bin, error bar = std over seeds
        bins = list(dict.fromkeys(b for r in runs for b in r["summary"]))
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(runs) * len(bins)), 3.5))
        w = 0.8 / len(bins)
        for j, b in enumerate(bins):
            ax.bar([i + j * w for i in range(len(runs))], [r["summary"].get(b, {}).get("mean", 0) for r in runs], w,
                   yerr=[r["summary"].get(b, {}).get("std", 0) for r in runs], label=b, capsize=2)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(runs))], [r["row"] for r in runs], rotation=20)
        ax.set_ylim(0, 1.05); ax.set_ylabel("accuracy"); ax.legend(fontsize=7)
        ax.set_title(f"{result['task']}: {result['model']}, {result['seeds']} seeds, {result['steps']} steps")
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    if argv[:1] == ["continual-lm"]:   # a stream of books, not train-then-test seeds: its own flags
        from hopelm.eval import continual_lm
        return continual_lm.main(argv[1:])
    args = parser().parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    t0 = time.time()
    result = run(args)
    result["seconds"] = round(time.time() - t0, 1)
    emit(result, table(result), args.out, plot, args.plot)


def emit(result: dict[str, Any], text: str, out: str | None, plot_fn, plot_path: str | None) -> None:
    """Print the table, write the JSON and draw the figure (each when asked for); shared with
    continual_lm."""
    print(text)
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
    if plot_path:
        plot_fn(result, plot_path)
        print(f"wrote {plot_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
