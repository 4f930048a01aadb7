"""Tokenizers: round trips, canonical GPT-2 ids, trained BPE save/rebuild."""
from __future__ import annotations

import json

import pytest

from hopelm.data import DataError, get_tokenizer, tokenizer_from_dict, train_bpe

TEXT = "Hello world, this is GPT-2 tokenization.\nÜnïcödé ☃ and emoji 🤖, tabs\tand  spaces.\n"


def test_bytes_round_trip():
    tok = get_tokenizer("bytes")
    ids = tok.encode(TEXT)
    assert (tok.vocab_size, tok.eot_id) == (256, None)
    assert ids == list(TEXT.encode("utf-8")) and tok.decode(ids) == TEXT
    # A window cut inside a multi-byte character decodes with a replacement, never raises.
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"
    assert tokenizer_from_dict(json.loads(json.dumps(tok.to_dict()))).encode(TEXT) == ids


def test_gpt2_canonical_ids():
    tok = get_tokenizer("gpt2")
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("Hello world, this is GPT-2 tokenization.") == [
        15496, 995, 11, 428, 318, 402, 11571, 12, 17, 11241, 1634, 13]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.decode([50256]) == "<|endoftext|>"
    assert tok.to_dict() == {"kind": "gpt2"}
    assert tokenizer_from_dict(tok.to_dict()).encode("Hello world") == [15496, 995]


def test_trained_bpe_round_trip(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 200 + TEXT, encoding="utf-8")
    out = tmp_path / "tok" / "tokenizer.json"
    tok = train_bpe([str(corpus)], 300, str(out))
    assert out.is_file() and tok.vocab_size <= 300 and tok.eot_id is not None
    ids = tok.encode("the quick brown fox")
    assert len(ids) < len("the quick brown fox")  # merges were learnt
    # Characters never seen in training still encode (byte fallback) and decode losslessly.
    for text in (TEXT, "never seen: ¿ð ₿ 漢字"):
        assert tok.decode(tok.encode(text)) == text
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["kind"] == "bpe"
    for again in (tokenizer_from_dict(d), get_tokenizer(str(out))):
        assert again.encode(TEXT) == tok.encode(TEXT)
        assert (again.vocab_size, again.eot_id) == (tok.vocab_size, tok.eot_id)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="Unknown tokenizer"):
        get_tokenizer("no-such-tokenizer")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        get_tokenizer(str(bad))
    with pytest.raises(DataError, match="Cannot rebuild"):
        tokenizer_from_dict({"kind": "sentencepiece"})
    with pytest.raises(DataError, match="at least 257"):
        train_bpe([str(bad)], 100, str(tmp_path / "t.json"))
