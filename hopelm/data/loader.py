"""Token memmaps and the training/evaluation window samplers.

A split is tokenized once into `<cache>/<name>.bin` (raw uint16/uint32 tokens), `.starts.npy`
(document offsets) and `.json` (written last: its presence means the entry is complete). The key
hashes the source files' paths, sizes and mtimes, the split, val_fraction and the tokenizer, so an
edited corpus or another tokenizer never reads stale tokens. Training windows are a pure function
of (seed, step, micro), which is what makes resuming and multi-process runs exact without state.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hopelm.config import DataConfig
from hopelm.data.corpus import normalize_split, read_documents, resolve_path, source_files
from hopelm.data.errors import DataError
from hopelm.data.tokenizers import Tokenizer

CACHE_VERSION = 1
_GROUP_CHARS = 4_000_000     # characters per encode_batch call: parallel, yet bounded memory
_PROGRESS_CHARS = 2_000_000  # below this, tokenizing takes a moment and a bar is noise


@dataclass
class TokenData:
    tokens: np.ndarray       # [N] uint16 (vocab <= 65536) or uint32, usually a read-only memmap
    doc_starts: np.ndarray   # [D] int64 offset of each document's first token

    def __len__(self) -> int:
        return len(self.tokens)


def cache_dir(cfg: DataConfig) -> Path:
    """data.cache_dir, else $HOPELM_CACHE, else ~/.cache/hopelm/tokens."""
    return Path(cfg.cache_dir or os.environ.get("HOPELM_CACHE") or "~/.cache/hopelm/tokens").expanduser()


def _source_signature(cfg: DataConfig) -> list[Any]:
    if cfg.path.startswith("hf:"):
        # Hub datasets have no local files to stat; datasets' own cache pins the version.
        return ["hf", cfg.path, cfg.hf_config, cfg.hf_text_field]
    sig = []
    for f in source_files(cfg.path):
        st = f.stat()
        sig.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return sig


def cache_key(cfg: DataConfig, tokenizer: Tokenizer, split: str) -> str:
    """Readable prefix + hash of everything that determines the tokens of this split."""
    payload = {"version": CACHE_VERSION, "sources": _source_signature(cfg), "split": split,
               "val_fraction": cfg.val_fraction, "tokenizer": tokenizer.to_dict()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    src = cfg.path[3:] if cfg.path.startswith("hf:") else resolve_path(cfg.path).name
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", src.removesuffix(".txt"))[:40] or "corpus"
    return f"{label}-{tokenizer.name}-{split}-{digest}"


def _token_dtype(tokenizer: Tokenizer) -> type:
    return np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32


def _load_cached(base: Path) -> TokenData | None:
    meta_p, bin_p, starts_p = (base.with_name(base.name + s) for s in (".json", ".bin", ".starts.npy"))
    try:
        meta = json.loads(meta_p.read_text())
        dtype = np.dtype(meta["dtype"])
        n = int(meta["n_tokens"])
        if meta.get("version") != CACHE_VERSION or bin_p.stat().st_size != n * dtype.itemsize:
            return None  # stale format or truncated: re-tokenize
        starts = np.load(starts_p, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    tokens = np.memmap(bin_p, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    return TokenData(tokens, starts.astype(np.int64))


def _groups(docs: list[str]) -> Iterator[list[str]]:
    group, size = [], 0
    for d in docs:
        group.append(d)
        size += len(d)
        if size >= _GROUP_CHARS:
            yield group
            group, size = [], 0
    if group:
        yield group


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)  # readers see the old file or the whole new one, never a partial one
    finally:
        tmp.unlink(missing_ok=True)


def _tokenize_to_cache(base: Path, docs: list[str], tokenizer: Tokenizer, desc: str) -> TokenData:
    dtype = _token_dtype(tokenizer)
    limit = np.iinfo(dtype).max
    eot = tokenizer.eot_id
    starts: list[int] = []
    n = 0

    def write_tokens(f) -> None:
        nonlocal n
        total = sum(len(d) for d in docs)
        with tqdm(total=total, unit="char", unit_scale=True, desc=desc, leave=False,
                  disable=total < _PROGRESS_CHARS) as bar:
            for group in _groups(docs):
                for doc, ids in zip(group, tokenizer.encode_batch(group)):
                    if n and eot is not None:  # eot *between* documents marks the boundary
                        f.write(np.asarray([eot], dtype).tobytes())
                        n += 1
                    if len(ids) and int(ids.max()) > limit:
                        raise DataError(f"Tokenizer {tokenizer.name!r} produced id {int(ids.max())}, beyond its vocab_size {tokenizer.vocab_size}.")
                    starts.append(n)
                    f.write(ids.astype(dtype).tobytes())
                    n += len(ids)
                    bar.update(len(doc))

    meta_p, bin_p, starts_p = (base.with_name(base.name + s) for s in (".json", ".bin", ".starts.npy"))
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        meta_p.unlink(missing_ok=True)  # an entry without its .json is never read, even half-replaced
        _atomic_write(bin_p, write_tokens)
        _atomic_write(starts_p, lambda f: np.save(f, np.asarray(starts, np.int64), allow_pickle=False))
        meta = {"version": CACHE_VERSION, "dtype": np.dtype(dtype).name, "n_tokens": n,
                "n_docs": len(starts), "tokenizer": tokenizer.name, "source": desc}
        _atomic_write(meta_p, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    except OSError as e:
        raise DataError(f"Cannot write the token cache in {str(base.parent)!r} ({e}); set data.cache_dir or HOPELM_CACHE to a writable folder.") from None
    data = _load_cached(base)
    assert data is not None, "token cache written but unreadable"
    return data


def load_tokens(cfg: DataConfig, tokenizer: Tokenizer, split: str) -> TokenData:
    """Tokens of one split, tokenized on first use and memory-mapped from the cache afterwards."""
    split = normalize_split(split)
    base = cache_dir(cfg) / cache_key(cfg, tokenizer, split)
    data = _load_cached(base)
    if data is None:
        docs = read_documents(cfg.path, split, val_fraction=cfg.val_fraction, hf_config=cfg.hf_config,
                              hf_text_field=cfg.hf_text_field)
        where = cfg.path or "TinyShakespeare"
        data = _tokenize_to_cache(base, docs, tokenizer, f"tokenizing {where} [{split}]")
    need = cfg.seq_len + 1
    if len(data) < need:
        raise DataError(f"The {split} split of {cfg.path or 'TinyShakespeare'!r} has {len(data)} tokens, "
                        f"but data.seq_len={cfg.seq_len} needs at least {need}.")
    return data


def _check_length(data: TokenData, seq_len: int) -> int:
    if seq_len <= 0:
        raise DataError(f"seq_len={seq_len} must be > 0.")
    n_starts = len(data.tokens) - seq_len  # a window reads seq_len + 1 tokens (inputs and targets)
    if n_starts <= 0:
        raise DataError(f"The data has {len(data.tokens)} tokens, but seq_len={seq_len} needs at least {seq_len + 1}.")
    return n_starts


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)               # [B, T+1]
    win = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return win[:, :-1].contiguous(), win[:, 1:].contiguous()     # x, y: [B, T]


class WindowSampler:
    """Random training windows; the global batch depends on (seed, step, micro) only.

    Rank r of world_size takes rows [r*b, (r+1)*b) of the global batch, b = batch_size // world_size,
    so ranks are disjoint, their union is the single-process batch, and resuming at step k needs
    no saved sampler state.
    """

    def __init__(self, data: TokenData, seq_len: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size <= 0 or world_size <= 0 or batch_size % world_size:
            raise DataError(f"batch_size={batch_size} must be a positive multiple of world_size={world_size}.")
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} must be in [0, {world_size}).")
        self.data, self.seq_len, self.batch_size = data, seq_len, batch_size
        self.n_starts = _check_length(data, seq_len)
        # SeedSequence entropy must be non-negative: map negative seeds to their 64-bit pattern.
        self.seed = seed & (2**64 - 1)
        self.rank, self.world_size = rank, world_size
        self.local = batch_size // world_size

    def starts(self, step: int, micro: int = 0) -> np.ndarray:
        """The global batch's window starts for (step, micro): [batch_size] int64."""
        if step < 0 or micro < 0:
            raise DataError(f"step={step} and micro={micro} must be >= 0.")
        rng = np.random.default_rng([self.seed, step, micro])
        return rng.integers(0, self.n_starts, size=self.batch_size, dtype=np.int64)

    def batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) LongTensors [batch_size // world_size, seq_len]; y is x shifted left by one."""
        mine = self.starts(step, micro)[self.rank * self.local:(self.rank + 1) * self.local]
        return _windows(self.data.tokens, mine, self.seq_len)


def eval_windows(data: TokenData, seq_len: int, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic evaluation batches: evenly spaced, non-overlapping windows over the whole split.

    Up to n_batches * batch_size windows; when the split holds fewer, it is tiled end to end (every
    token scored once). The last batch may be smaller.
    """
    if batch_size <= 0 or n_batches <= 0:
        raise DataError(f"batch_size={batch_size} and n_batches={n_batches} must be > 0.")
    _check_length(data, seq_len)
    fit = (len(data.tokens) - 1) // seq_len
    n = min(fit, batch_size * n_batches)
    if n == fit:
        starts = np.arange(n, dtype=np.int64) * seq_len
    else:
        span = len(data.tokens) - 1 - seq_len  # the last valid start
        # floor(i * span / (n-1)) steps by >= seq_len because span >= (n-1) * seq_len when n <= fit.
        starts = (np.arange(n, dtype=np.int64) * span) // max(n - 1, 1)
    return [_windows(data.tokens, starts[i:i + batch_size], seq_len) for i in range(0, n, batch_size)]


__all__ = ["TokenData", "load_tokens", "WindowSampler", "eval_windows", "cache_dir", "cache_key"]
