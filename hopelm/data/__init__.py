"""Data: tokenizers (bytes, GPT-2 BPE from vendored files, trained BPE), corpora, token memmaps, samplers."""
from __future__ import annotations

from hopelm.data.corpus import read_documents
from hopelm.data.errors import DataError
from hopelm.data.loader import TokenData, WindowSampler, eval_windows, load_tokens
from hopelm.data.tokenizers import Tokenizer, get_tokenizer, tokenizer_from_dict, train_bpe

__all__ = ["DataError", "Tokenizer", "get_tokenizer", "tokenizer_from_dict", "train_bpe", "read_documents",
           "TokenData", "load_tokens", "WindowSampler", "eval_windows"]
