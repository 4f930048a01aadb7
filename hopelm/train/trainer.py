"""The training loop: one script for one process and for `torchrun` (DDP, gloo on CPU / nccl on GPU).

Reproducibility contract: the batch of step s is a pure function of (seed, s), the learning rate
a pure function of s, and the checkpoint holds weights, optimizer state and RNG states; so
`--resume` after step k continues with exactly the losses the uninterrupted run would have had.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from hopelm.config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from hopelm.data import eval_windows, get_tokenizer, load_tokens, tokenizer_from_dict, WindowSampler
from hopelm.eval.perplexity import bits_per_byte, evaluate_loss, window_bytes
from hopelm.models import model_from_config
from hopelm.optim.build import build_optimizer, lr_at
from hopelm.train.checkpoint import capture_rng, latest_checkpoint, load_checkpoint, prune_checkpoints, restore_rng, save_checkpoint
from hopelm.train.diagnose import trace_non_finite
from hopelm.train.distributed import close_world, init_world
from hopelm.train.graphs import GraphedStep
from hopelm.train.logging import MetricsLogger


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available on this machine.")
    return torch.device(name)


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of train.dtype on `device` (None: no autocast): auto = bf16 on CUDA."""
    return torch.bfloat16 if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda") else None


def precision(dtype: str, device: torch.device) -> tuple[torch.dtype, Any]:
    """(parameter dtype, autocast context factory). auto = bf16 autocast on CUDA, fp32 on CPU."""
    if dtype == "float64":
        return torch.float64, contextlib.nullcontext
    amp = autocast_dtype(dtype, device)
    if amp is not None:
        return torch.float32, lambda: torch.autocast(device.type, dtype=amp)
    return torch.float32, contextlib.nullcontext


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_vocab(cfg: Config, vocab_size: int) -> None:
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab_size
    elif cfg.model.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"vocabulary ({vocab_size}).")


# Skipping one bad batch is recovery; the same failure on every batch means the weights themselves
# now blow up the forward pass (e.g. an unstable inner memory), and skipping forever would only
# burn the remaining budget and then save a model that cannot be evaluated.
MAX_SKIPS_IN_A_ROW = 10


class TrainingDiverged(RuntimeError):
    pass


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ in its two halves (the same numbers), skipping the scaling when the norm is
    not finite: a NaN norm would scale every gradient to NaN and hide which ones were bad."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not hasattr(torch.nn.utils, "get_total_norm"):         # torch < 2.6
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # torch.where, not an if: the scale factor stays on the device (no host sync here).
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, torch.where(torch.isfinite(norm), norm, 0.0))
    return norm


def non_finite_grads(model: torch.nn.Module) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or an infinity (where a divergence starts)."""
    return [n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]


def prepare_run(preset: str | None = "tiny", config_file: str | None = None,
                overrides: list[str] | None = None, resume: str | None = None):
    """Resolve the config (from a checkpoint when resuming), the tokenizer and the checkpoint."""
    ckpt = None
    if resume:
        path = latest_checkpoint(resume)
        if path is None:
            raise ConfigError(f"--resume {resume!r}: no checkpoint found there.")
        ckpt = load_checkpoint(path)
        cfg = config_from_dict(ckpt.config)
        apply_overrides(cfg, overrides)  # e.g. a longer schedule: --train.max_steps=1000
        tokenizer = tokenizer_from_dict(ckpt.meta["tokenizer"])
    else:
        cfg = load_config(preset, config_file, overrides)
        tokenizer = get_tokenizer(cfg.data.tokenizer)
    resolve_vocab(cfg, tokenizer.vocab_size)
    return cfg, tokenizer, ckpt


def train(cfg: Config, tokenizer=None, ckpt=None) -> dict[str, Any]:
    """Train `cfg`; returns a summary (final validation loss, tokens/s, losses per step)."""
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    world = init_world(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if tcfg.cuda_graph and (device.type != "cuda" or world.distributed):
        raise ConfigError(f"train.cuda_graph=true needs one process on a CUDA device; this run has "
                          f"{world.size} process(es) on {device.type}.")
    if tcfg.batch_size % world.size:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} must be divisible by the number of "
                          f"processes ({world.size}).")
    tokenizer = tokenizer or get_tokenizer(cfg.data.tokenizer)
    resolve_vocab(cfg, tokenizer.vocab_size)
    param_dtype, autocast = precision(tcfg.dtype, device)
    seed_everything(tcfg.seed)
    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if world.is_main else (lambda msg: None)

    # Data first: a bad corpus fails before any model is built. Rank 0 fills the token cache
    # while the other ranks wait at the barrier, then they read it.
    if not world.is_main:
        world.barrier()
    train_data = load_tokens(cfg.data, tokenizer, "train")
    val_data = load_tokens(cfg.data, tokenizer, "validation")
    if world.is_main:
        world.barrier()
    seq_len = cfg.data.seq_len
    sampler = WindowSampler(train_data, seq_len, tcfg.batch_size, tcfg.seed, world.rank, world.size)
    val_windows = eval_windows(val_data, seq_len, tcfg.batch_size, tcfg.eval_batches)
    val_bytes = window_bytes(val_windows, tokenizer)

    model = model_from_config(cfg.model).to(device=device, dtype=param_dtype)
    optimizer = build_optimizer(model, cfg.optim)
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        restore_rng(ckpt.rng)
        start = int(ckpt.meta["step"])
    if tcfg.compile_mixers:
        # Only the mixers: the CMS block loop takes autograd.grad between blocks, where a whole-model
        # compile breaks its graph; the mixers' chunked memories are where fusion pays (docs/results.md).
        for block in model.blocks:
            block.mixer.compile()
    raw_model = model
    if world.distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg.compile:
        model = torch.compile(model)

    out_dir = Path(tcfg.out_dir.replace("{model}", cfg.model.name))
    logger = MetricsLogger(out_dir, tcfg.tensorboard, enabled=world.is_main)
    if world.is_main:
        say(f"hopelm: training {cfg.model.name} ({raw_model.param_counts()['non_embedding']:,} non-embedding "
            f"parameters) on {device} with {world.size} process(es); resolved config:\n{cfg.to_json()}")
    tokens_per_step = tcfg.batch_size * tcfg.grad_accum * seq_len

    def evaluate() -> dict[str, float]:
        loss, n = evaluate_loss(raw_model, val_windows, device, autocast)
        return {"val_loss": loss, "val_ppl": float(np.exp(min(loss, 50))), "val_bpb": bits_per_byte(loss, n, val_bytes)}

    def checkpoint(step: int, name: str, metrics: dict) -> None:
        if world.is_main:
            meta = {"step": step, "tokens_seen": step * tokens_per_step, "tokenizer": tokenizer.to_dict(),
                    "data_position": {"seed": tcfg.seed, "next_step": step}, "metrics": metrics}
            save_checkpoint(out_dir / name, model=raw_model, optimizer=optimizer, config=cfg.to_dict(),
                            meta=meta, rng=capture_rng())
            if name.startswith("step_"):
                prune_checkpoints(out_dir, cfg.checkpoint.keep_last)
        world.barrier()

    losses: dict[int, float] = {}
    metrics: dict[str, float] = {}
    skipped = in_a_row = 0
    bar = tqdm(total=tcfg.max_steps, initial=start, disable=not (world.is_main and tcfg.progress),
               desc=cfg.model.name, dynamic_ncols=True, file=sys.stderr)
    t_log, tokens_since = time.perf_counter(), 0
    tok_s = 0.0
    graphed: GraphedStep | None = None
    model.train()
    for step in range(start, tcfg.max_steps):
        lr = lr_at(step, cfg.optim, tcfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        if tcfg.cuda_graph:   # one micro-batch (checked by the config), replayed from its graph
            x, y = (t.to(device) for t in sampler.batch(step, 0))
            if graphed is None:
                graphed = GraphedStep(raw_model, x, y, autocast_dtype(tcfg.dtype, device))
            step_loss += graphed(x, y).detach().float()
        for micro in range(0 if tcfg.cuda_graph else tcfg.grad_accum):
            x, y = (t.to(device) for t in sampler.batch(step, micro))
            sync = not world.distributed or micro == tcfg.grad_accum - 1
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast():
                loss = model(x, y).loss / tcfg.grad_accum
            loss.backward()
            step_loss += loss.detach().float()
        step_loss = world.mean(step_loss)
        clip = tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf")
        grad_norm = clip_gradients(raw_model, clip)
        loss_value = step_loss.item()
        if not (np.isfinite(loss_value) and torch.isfinite(grad_norm)):
            # Skip rather than poison the weights and the optimizer moments; say so every time.
            skipped += 1
            in_a_row += 1
            bad = non_finite_grads(raw_model)
            say(f"step {step}: non-finite loss {loss_value} / grad norm {grad_norm.item()}; step skipped"
                + (f" (non-finite gradients in {len(bad)} parameter{'s' * (len(bad) > 1)}, first {', '.join(bad[:3])})."
                   if bad else "."))
            if tcfg.trace_nonfinite and skipped == 1:   # once: anomaly mode is slow
                batches = [tuple(t.to(device) for t in sampler.batch(step, m))
                           for m in range(1 if tcfg.cuda_graph else tcfg.grad_accum)]
                say(trace_non_finite(raw_model, batches, autocast))
            optimizer.zero_grad(set_to_none=graphed is None)   # a graph's gradients are its own tensors
            logger.log(step, "skip", loss=loss_value)
            if in_a_row >= MAX_SKIPS_IN_A_ROW:
                raise TrainingDiverged(
                    f"Training diverged: {in_a_row} steps in a row (up to step {step}) had a non-finite loss or "
                    f"gradient; lower optim.lr or the model's inner rates (model.eta_max, model.cms_lrs).")
        else:
            in_a_row = 0
            optimizer.step()
            if graphed is None:   # a replay overwrites the graph's gradients; they must stay its tensors
                optimizer.zero_grad(set_to_none=True)
        losses[step] = loss_value
        tokens_since += tokens_per_step
        bar.update(1)
        done = step + 1
        if done % tcfg.log_interval == 0 or done == tcfg.max_steps:
            elapsed = time.perf_counter() - t_log
            tok_s = tokens_since / max(elapsed, 1e-9)
            t_log, tokens_since = time.perf_counter(), 0
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
            logger.log(done, "train", loss=loss_value, lr=lr, grad_norm=float(grad_norm), tokens_per_s=tok_s)
            if not tcfg.progress:  # no bar (logs, torchrun): print the line the bar would show
                say(f"step {done}/{tcfg.max_steps}: loss {loss_value:.4f}, lr {lr:.2e}, {tok_s:,.0f} tokens/s")
        if (tcfg.eval_interval and done % tcfg.eval_interval == 0) or done == tcfg.max_steps:
            metrics = evaluate() if world.is_main else {}
            world.barrier()
            if world.is_main:
                logger.log(done, "val", **metrics)
                say(f"step {done}: val loss {metrics['val_loss']:.4f}, bpb {metrics['val_bpb']:.4f}")
        if cfg.checkpoint.interval and done % cfg.checkpoint.interval == 0 and done < tcfg.max_steps:
            checkpoint(done, f"step_{done:06d}", metrics)
    bar.close()
    if start < tcfg.max_steps or not (out_dir / "final").exists():
        if not metrics and world.is_main:
            metrics = evaluate()
        checkpoint(tcfg.max_steps, "final", metrics)
    logger.close()
    close_world(world)
    return {"losses": losses, "metrics": metrics, "tokens_per_s": tok_s, "skipped_steps": skipped,
            "out_dir": str(out_dir), "config": dataclasses.asdict(cfg)}
