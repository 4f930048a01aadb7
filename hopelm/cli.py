"""`hopelm` command line: train, eval, sample, info, levels, stack, tokenizer, bench.

Any argument of the form `--section.key=value` is a config override (`--train.max_steps=200`).
Errors in user input print one sentence and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from hopelm.config import ConfigError, list_presets


def _split_overrides(extra: list[str]) -> list[str]:
    overrides = []
    for arg in extra:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if "." not in key or "=" not in arg:
            raise ConfigError(f"Unrecognised argument {arg!r} (config overrides look like --train.max_steps=200).")
        overrides.append(arg)
    return overrides


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help=f"preset name ({', '.join(list_presets())})")
    p.add_argument("--config", default=None, help="a TOML config file (instead of --preset)")


def cmd_train(args, overrides: list[str]) -> None:
    from hopelm.train.trainer import prepare_run, train
    cfg, tokenizer, ckpt = prepare_run(args.preset, args.config, overrides, args.resume)
    summary = train(cfg, tokenizer, ckpt)
    m = summary["metrics"]
    if m:
        print(f"done: {cfg.model.name} step {cfg.train.max_steps}, val loss {m['val_loss']:.4f}, "
              f"bpb {m['val_bpb']:.4f}, {summary['tokens_per_s']:,.0f} tokens/s; "
              f"checkpoint {summary['out_dir']}/final")


def cmd_eval(args, overrides: list[str]) -> None:
    import hopelm
    from hopelm.config import apply_overrides
    from hopelm.data import eval_windows, load_tokens
    from hopelm.eval.perplexity import bits_per_byte, evaluate_loss, window_bytes
    model, tokenizer = hopelm.load(args.checkpoint, device=args.device)
    cfg = apply_overrides(model.run_config, overrides)
    data = load_tokens(cfg.data, tokenizer, args.split)
    windows = eval_windows(data, cfg.data.seq_len, args.batch_size or cfg.train.batch_size, args.batches)
    loss, n = evaluate_loss(model, windows, torch.device(args.device))
    result = {"checkpoint": args.checkpoint, "split": args.split, "tokens": n, "loss": loss,
              "perplexity": float(torch.tensor(loss).exp()), "bits_per_byte": bits_per_byte(loss, n, window_bytes(windows, tokenizer))}
    print(json.dumps(result, indent=2) if args.json else
          f"{args.split}: loss {loss:.4f}  perplexity {result['perplexity']:.3f}  "
          f"bits/byte {result['bits_per_byte']:.4f}  ({n:,} tokens)")


def cmd_sample(args, overrides: list[str]) -> None:
    import hopelm
    if overrides:
        raise ConfigError("sample takes no config overrides.")
    model, tokenizer = hopelm.load(args.checkpoint, device=args.device)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ConfigError("The prompt encodes to no tokens; give a non-empty --prompt.")
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    idx = torch.tensor([ids], device=args.device)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, generator=gen)
    print(tokenizer.decode(out[0].tolist()))


def cmd_info(args, overrides: list[str]) -> None:
    from hopelm.config import load_config
    from hopelm.data import get_tokenizer
    from hopelm.models import model_from_config
    if args.checkpoint:
        import hopelm
        model, _ = hopelm.load(args.checkpoint)
        cfg = model.run_config
    else:
        cfg = load_config(args.preset, args.config, overrides)
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = get_tokenizer(cfg.data.tokenizer).vocab_size
        model = model_from_config(cfg.model)
    device = "cuda (" + torch.cuda.get_device_name() + ")" if torch.cuda.is_available() else "cpu"
    info = {"config": cfg.to_dict(), "parameters": model.param_counts(), "device": device,
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(cfg.to_json())
    print("parameters by component:")
    for key, n in info["parameters"].items():
        print(f"  {key:<16} {n:>12,}")
    print(f"device: {device}; torch {torch.__version__}; {torch.get_num_threads()} threads")


def cmd_levels(args, overrides: list[str]) -> None:
    """Every component's level, period and measured update frequency f_z(H) (SPEC §1)."""
    import hopelm
    from hopelm.config import apply_overrides
    from hopelm.data import load_tokens
    from hopelm.eval.levels import measure_levels, plot_levels
    model, tokenizer = hopelm.load(args.checkpoint)
    cfg = apply_overrides(model.run_config, overrides)
    data = load_tokens(cfg.data, tokenizer, args.split)
    if len(data.tokens) < args.tokens:
        raise ConfigError(f"--tokens {args.tokens} is more than the {len(data.tokens)} tokens of the {args.split} split.")
    tokens = torch.as_tensor(data.tokens[:args.tokens].astype("int64"))[None]
    rows = measure_levels(model, tokens)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"measured over H = {args.tokens} tokens of the {args.split} split, fed one at a time")
        print(f"{'level':>5}  {'f_z(H)':>8}  {'period':>7}  component")
        for r in rows:
            period = f"{r['period']:.1f}" if r["period"] else "-"
            print(f"{r['level']:>5}  {r['frequency']:>8.4f}  {period:>7}  {r['component']}")
    if args.plot:
        plot_levels(rows, args.plot)
        print(f"frequency spectrum saved to {args.plot}", file=sys.stderr)


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        return [kind(v) for v in text.strip("[]").split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be a comma-separated list of numbers, like 64,128,0.") from None


def cmd_stack(args, overrides: list[str]) -> None:
    """Ad-hoc level stacking (NL §7.3): a trained model's FFNs become CMS levels, saved as the
    step-0 checkpoint of a new run directory that `hopelm train --resume` fine-tunes."""
    import copy
    from pathlib import Path

    import hopelm
    from hopelm.config import apply_overrides
    from hopelm.models.stacking import stack_levels
    from hopelm.train.checkpoint import latest_checkpoint, save_checkpoint
    if any(o.startswith("--model.") for o in overrides):
        raise ConfigError("stack builds the model section itself; set the levels with --cms-periods, --cms-lrs, "
                          "--cms-variant and --cms-momentum (other overrides: train.*, optim.*, data.*).")
    if latest_checkpoint(args.out) is not None:
        raise ConfigError(f"--out {args.out!r} already holds a checkpoint; give a new run directory.")
    model, tokenizer = hopelm.load(args.checkpoint)
    stacked = stack_levels(model, _numbers(args.cms_periods, int, "--cms-periods"),
                           _numbers(args.cms_lrs, float, "--cms-lrs"), args.cms_variant, args.cms_momentum,
                           args.pretrained_level)
    cfg = copy.deepcopy(model.run_config)
    cfg.model = stacked.cfg
    cfg.train.out_dir = str(args.out)         # fine-tuning continues in the new run directory
    cfg = apply_overrides(cfg, overrides)
    meta = {"step": 0, "tokens_seen": 0, "tokenizer": tokenizer.to_dict(), "stacked_from": str(args.checkpoint)}
    path = save_checkpoint(Path(args.out) / "step_000000", model=stacked, optimizer=None, config=cfg.to_dict(),
                           meta=meta)
    n_old, n_new = model.param_counts()["non_embedding"], stacked.param_counts()["non_embedding"]
    print(f"stacked {model.cfg.name} -> {stacked.cfg.name}: CMS periods {stacked.cfg.cms_periods}, rates "
          f"{stacked.cfg.cms_lrs} ({stacked.cfg.cms_variant}); {n_old:,} -> {n_new:,} non-embedding parameters; "
          f"saved {path}. Fine-tune with: hopelm train --resume {args.out}")


def cmd_tokenizer(args, overrides: list[str]) -> None:
    from pathlib import Path

    from hopelm.data import train_bpe
    from hopelm.data.corpus import read_documents
    if overrides:
        raise ConfigError("tokenizer train takes no config overrides.")
    docs = read_documents(args.data, "train")
    tmp = Path(args.out).with_suffix(".corpus.txt")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n\n".join(docs), encoding="utf-8")
    try:
        tok = train_bpe([str(tmp)], args.vocab_size, args.out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"trained a {tok.vocab_size}-token byte-level BPE on {args.data or 'TinyShakespeare'}; saved {args.out}")


def cmd_bench(args, overrides: list[str]) -> None:
    from hopelm.bench import run_bench
    run_bench(args, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hopelm", description="Nested Learning / HOPE language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (default: the tiny preset on TinyShakespeare)")
    _add_config_args(p)
    p.add_argument("--resume", default=None, help="a run directory or checkpoint to continue exactly")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="loss, perplexity and bits per byte of a checkpoint on a split; "
                       "`hopelm eval <task> --help` for the task suite (mqar, formal, mad, niah, babilong, continual)")
    p.add_argument("checkpoint")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("info", help="resolved config, parameter counts by component, device")
    p.add_argument("checkpoint", nargs="?", default=None)
    _add_config_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("levels", help="nested-learning levels: measured update frequency of every component")
    p.add_argument("checkpoint")
    p.add_argument("--tokens", type=int, default=512, help="horizon H of the measurement")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--plot", default=None, help="save the frequency spectrum as an image (PNG)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_levels)

    p = sub.add_parser("stack", help="ad-hoc level stacking (NL §7.3): turn a trained model's MLPs into CMS levels")
    p.add_argument("checkpoint", help="a transformer, titans or gated_deltanet checkpoint or run directory")
    p.add_argument("--out", required=True, help="new run directory; the stacked model is saved as its step_000000")
    p.add_argument("--cms-periods", required=True, help="tokens per update of each level, fastest first: 64,128,0")
    p.add_argument("--cms-lrs", required=True, help="inner learning rate of each level: 1e-3,3e-4,0")
    p.add_argument("--cms-variant", default="sequential", choices=["sequential", "nested", "independent"])
    p.add_argument("--cms-momentum", type=float, default=0.0)
    p.add_argument("--pretrained-level", type=int, default=-1,
                   help="the level that keeps the pretrained MLP whole (default -1: the slowest); "
                        "the others start with a zero down-projection")
    p.set_defaults(fn=cmd_stack)

    p = sub.add_parser("bench", help="training tokens/s, prefill and decode latency vs length, MFU of every model")
    _add_config_args(p)
    from hopelm.bench import add_arguments   # the harness defines its own flags
    add_arguments(p)
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tsub = p.add_subparsers(dest="tok_command", required=True)
    t = tsub.add_parser("train", help="train a BPE on a corpus' train split")
    t.add_argument("--data", default="", help="corpus path (default: the vendored TinyShakespeare)")
    t.add_argument("--vocab-size", type=int, default=1024)
    t.add_argument("--out", required=True, help="where to write tokenizer.json")
    t.set_defaults(fn=cmd_tokenizer)
    return parser


def main(argv: list[str] | None = None) -> None:
    from hopelm.data import DataError
    from hopelm.train.checkpoint import CheckpointError
    from hopelm.train.trainer import TrainingDiverged
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "eval":
        from hopelm.eval import tasks_cli
        if argv[1] in tasks_cli.TASKS:   # `hopelm eval <task>`: the evaluation suite
            return tasks_cli.main(argv[1:])
    args, extra = build_parser().parse_known_args(argv)
    try:
        args.fn(args, _split_overrides(extra))
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"hopelm {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:
        print(f"hopelm {args.command}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
