"""Tokenizers: raw bytes, canonical GPT-2 BPE (from vendored files) and locally trained byte-level BPE.

Every tokenizer is rebuilt offline from `to_dict()`, which is what checkpoints store. The BPE ones
wrap the Hugging Face `tokenizers` library (imported lazily, so `bytes` needs nothing but numpy).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hopelm.data.errors import DataError

GPT2_DIR = Path(__file__).resolve().parent.parent / "assets" / "gpt2"
EOT_TEXT = "<|endoftext|>"
# Names a trained or third-party tokenizer.json may use for its end-of-document token.
_EOT_CANDIDATES = (EOT_TEXT, "<|eot|>", "</s>", "<eos>", "<|end_of_text|>")


class Tokenizer:
    """Text <-> token ids. Subclasses set `name`, `vocab_size` and `eot_id`."""

    name: str = ""
    vocab_size: int = 0
    eot_id: int | None = None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Encode many documents; subclasses override with a faster (parallel) path."""
        return [np.asarray(self.encode(t), dtype=np.int64) for t in texts]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def _int_list(ids: Iterable[int]) -> list[int]:
    # Accept lists, numpy arrays and tensors alike (tensors have .tolist()).
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: vocab 256, no end-of-document token, lossless on any text."""

    name = "bytes"
    vocab_size = 256
    eot_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        # A window may cut a multi-byte character in half: replace, never raise.
        return bytes(_int_list(ids)).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "bytes"}


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (byte-level BPE) behind the hopelm interface."""

    def __init__(self, tok: Any, name: str, eot_id: int | None = None):
        self.tok = tok
        self.name = name
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        if eot_id is None:
            eot_id = next((i for t in _EOT_CANDIDATES if (i := tok.token_to_id(t)) is not None), None)
        self.eot_id = eot_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # encode_batch runs in parallel in Rust; that is where big corpora spend their time.
        encs = self.tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        # The ByteLevel decoder decodes bytes lossily, so split characters become U+FFFD.
        return self.tok.decode(_int_list(ids), skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        if self.name == "gpt2":
            return {"kind": "gpt2"}  # rebuilt from the vendored files, no need to store 1.5 MB
        return {"kind": "bpe", "json": self.tok.to_str()}


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - a declared dependency
        raise DataError("BPE tokenizers need the `tokenizers` package (pip install tokenizers).") from None
    return tokenizers


@functools.lru_cache(maxsize=1)
def _gpt2_backend() -> Any:
    tk = _require_tokenizers()
    vocab, merges = GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe"
    for p in (vocab, merges):
        if not p.is_file():
            raise DataError(f"The vendored GPT-2 BPE file {str(p)!r} is missing; reinstall hopelm.")
    tok = tk.Tokenizer(tk.models.BPE.from_file(str(vocab), str(merges)))
    # GPT-2 itself: byte-level, its own split regex, no prefix space, no normaliser.
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    # <|endoftext|> is deliberately not an "added" special token: a literal "<|endoftext|>" inside a
    # document is encoded as ordinary text (like tiktoken's encode_ordinary), so only the separators
    # the loader inserts are document boundaries. It is still in the vocabulary, so it decodes.
    return tok


def gpt2_tokenizer() -> HFTokenizer:
    """Canonical GPT-2 BPE: vocab 50257, eot 50256; "Hello world" -> [15496, 995]."""
    tok = _gpt2_backend()
    return HFTokenizer(tok, "gpt2", eot_id=tok.token_to_id(EOT_TEXT))


def _bpe_from_json(text: str, origin: str) -> HFTokenizer:
    tk = _require_tokenizers()
    try:
        tok = tk.Tokenizer.from_str(text)
    except Exception as e:  # the library raises a bare Exception on malformed JSON
        raise DataError(f"{origin} is not a valid tokenizer.json ({e}).") from None
    return HFTokenizer(tok, "bpe")


def get_tokenizer(spec: str) -> Tokenizer:
    """'bytes' | 'gpt2' | path to a tokenizer.json (e.g. from `train_bpe`)."""
    if spec == "bytes":
        return ByteTokenizer()
    if spec == "gpt2":
        return gpt2_tokenizer()
    p = Path(spec).expanduser()
    if not p.is_file():
        raise DataError(f"Unknown tokenizer {spec!r}: expected 'bytes', 'gpt2' or the path of an existing tokenizer.json.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Cannot read tokenizer file {str(p)!r} ({e}).") from None
    return _bpe_from_json(text, f"Tokenizer file {str(p)!r}")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Inverse of `Tokenizer.to_dict()` (works offline)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "bpe" and isinstance(d.get("json"), str):
        return _bpe_from_json(d["json"], "The stored BPE tokenizer")
    raise DataError(f"Cannot rebuild a tokenizer from {str(d)[:80]!r}: expected kind 'bytes', 'gpt2' or 'bpe' with its json.")


def train_bpe(files: list[str], vocab_size: int, out_path: str) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style) on text files with `tokenizers`; save tokenizer.json."""
    tk = _require_tokenizers()
    # 256 byte symbols + <|endoftext|> is the smallest vocabulary that can spell every text.
    if vocab_size < 257 or vocab_size > 2**32 - 1:
        raise DataError(f"BPE vocab_size={vocab_size} must be at least 257 (256 bytes + <|endoftext|>).")
    for f in files:
        if not Path(f).is_file():
            raise DataError(f"BPE training file {f!r} does not exist.")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=False,
        # Seed with all 256 byte symbols so unseen characters still encode (no unknown token).
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(f) for f in files], trainer)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return HFTokenizer(tok, "bpe")


__all__ = ["Tokenizer", "ByteTokenizer", "HFTokenizer", "get_tokenizer", "tokenizer_from_dict",
           "train_bpe", "gpt2_tokenizer"]

