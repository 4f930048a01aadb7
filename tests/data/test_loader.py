"""Token cache and window samplers: determinism, resume, ranks, cache reuse, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hopelm.config import DataConfig
from hopelm.data import DataError, TokenData, WindowSampler, eval_windows, get_tokenizer, load_tokens
from hopelm.data import loader


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPELM_CACHE", str(tmp_path / "cache"))


def _data(n: int = 5000) -> TokenData:
    return TokenData(np.arange(n, dtype=np.uint16), np.array([0], dtype=np.int64))


def _docs_folder(tmp_path, n_docs: int = 4):
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(n_docs):
        (root / f"{i:02d}.txt").write_text(f"doc {i}: " + "abc " * 50, encoding="utf-8")
    return root


def test_load_tokens_bytes_and_boundaries(tmp_path):
    root = _docs_folder(tmp_path)
    cfg = DataConfig(path=str(root), seq_len=16, val_fraction=0.25)
    tok = get_tokenizer("bytes")
    data = load_tokens(cfg, tok, "train")
    assert data.tokens.dtype == np.uint16 and len(data.doc_starts) == 3
    text = "".join((root / f"{i:02d}.txt").read_text() for i in range(3))
    assert tok.decode(data.tokens) == text  # bytes has no eot: documents are concatenated
    assert [tok.decode(data.tokens[s:s + 6]) for s in data.doc_starts] == ["doc 0:", "doc 1:", "doc 2:"]


def test_eot_between_documents(tmp_path):
    root = _docs_folder(tmp_path)
    tok = get_tokenizer("gpt2")
    data = load_tokens(DataConfig(path=str(root), seq_len=16, val_fraction=0.25), tok, "train")
    starts = data.doc_starts.tolist()
    assert starts[0] == 0 and all(data.tokens[s - 1] == tok.eot_id for s in starts[1:])
    assert int((np.asarray(data.tokens) == tok.eot_id).sum()) == 2
    assert tok.decode(data.tokens[: starts[1] - 1]) == (root / "00.txt").read_text()


def test_cache_is_reused_not_retokenized(tmp_path, monkeypatch):
    cfg = DataConfig(path=str(_docs_folder(tmp_path)), seq_len=16)
    tok = get_tokenizer("bytes")
    first = load_tokens(cfg, tok, "train")
    files = sorted((tmp_path / "cache").iterdir())
    assert [f.suffix for f in files] == [".bin", ".json", ".npy"]  # no leftover temporaries
    mtimes = [f.stat().st_mtime_ns for f in files]

    def boom(*a, **k):
        raise AssertionError("re-tokenized although the cache is valid")

    monkeypatch.setattr(loader, "_tokenize_to_cache", boom)
    monkeypatch.setattr(loader, "read_documents", boom)
    second = load_tokens(cfg, tok, "train")
    assert isinstance(second.tokens, np.memmap)
    assert np.array_equal(first.tokens, second.tokens)
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_cache_key_changes_with_inputs(tmp_path):
    root = _docs_folder(tmp_path)
    cfg = DataConfig(path=str(root), seq_len=16)
    bytes_tok, gpt2 = get_tokenizer("bytes"), get_tokenizer("gpt2")
    key = loader.cache_key(cfg, bytes_tok, "train")
    assert key == loader.cache_key(cfg, bytes_tok, "train")
    assert key != loader.cache_key(cfg, gpt2, "train")
    assert key != loader.cache_key(cfg, bytes_tok, "validation")
    assert key != loader.cache_key(DataConfig(path=str(root), val_fraction=0.3), bytes_tok, "train")
    (root / "00.txt").write_text("edited document " * 20)
    assert key != loader.cache_key(cfg, bytes_tok, "train")
    # And the edit is seen by the next load (no stale tokens).
    data = load_tokens(cfg, bytes_tok, "train")
    assert bytes_tok.decode(data.tokens[:16]) == "edited document "


def test_truncated_cache_is_rebuilt(tmp_path):
    cfg = DataConfig(path=str(_docs_folder(tmp_path)), seq_len=16)
    tok = get_tokenizer("bytes")
    ref = np.array(load_tokens(cfg, tok, "train").tokens)
    (bin_file,) = (tmp_path / "cache").glob("*.bin")
    bin_file.write_bytes(bin_file.read_bytes()[:100])
    assert np.array_equal(load_tokens(cfg, tok, "train").tokens, ref)


def test_sampler_determinism_and_resume():
    data = _data()
    s = WindowSampler(data, seq_len=32, batch_size=8, seed=123)
    x, y = s.batch(5)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y[:, -1], x[:, -1] + 1)  # tokens are arange: y is the next token
    # Same step -> same batch, from a fresh sampler and regardless of what was drawn before.
    fresh = WindowSampler(data, seq_len=32, batch_size=8, seed=123)
    for k in range(5):
        fresh.batch(k)
    assert torch.equal(fresh.batch(5)[0], x)
    assert torch.equal(WindowSampler(data, 32, 8, seed=123).batch(5)[0], x)
    # Different steps, micro-batches and seeds differ.
    assert not torch.equal(s.batch(6)[0], x)
    assert not torch.equal(s.batch(5, micro=1)[0], x)
    assert not torch.equal(WindowSampler(data, 32, 8, seed=124).batch(5)[0], x)


def test_sampler_covers_valid_starts_only():
    data = _data(40)
    s = WindowSampler(data, seq_len=32, batch_size=64, seed=0)
    starts = np.concatenate([s.starts(k) for k in range(20)])
    assert starts.min() == 0 and starts.max() == 40 - 32 - 1  # uniform over every valid start


def test_ranks_are_disjoint_and_union_is_the_global_batch():
    data = _data()
    full_x, full_y = WindowSampler(data, 16, 12, seed=7).batch(3, micro=2)
    parts = [WindowSampler(data, 16, 12, seed=7, rank=r, world_size=3).batch(3, micro=2) for r in range(3)]
    assert all(p[0].shape == (4, 16) for p in parts)
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)
    with pytest.raises(DataError, match="multiple of world_size"):
        WindowSampler(data, 16, 10, seed=7, rank=0, world_size=3)


def test_eval_windows_are_deterministic_and_non_overlapping():
    data = _data(1000)
    wins = eval_windows(data, seq_len=32, batch_size=4, n_batches=3)
    assert len(wins) == 3 and all(x.shape == (4, 32) for x, _ in wins)
    starts = torch.cat([x[:, 0] for x, _ in wins]).tolist()
    assert starts[0] == 0 and starts[-1] == 1000 - 33
    assert all(b - a >= 32 for a, b in zip(starts, starts[1:]))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(wins, eval_windows(data, 32, 4, 3)))
    # A split smaller than n_batches * batch_size windows is tiled end to end; last batch partial.
    small = eval_windows(_data(200), seq_len=32, batch_size=4, n_batches=10)
    assert [x.shape[0] for x, _ in small] == [4, 2]
    assert torch.cat([x[:, 0] for x, _ in small]).tolist() == [0, 32, 64, 96, 128, 160]


def test_too_short_corpus_says_how_many_tokens(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("just a few words\n" * 3)
    cfg = DataConfig(path=str(f), seq_len=256)
    with pytest.raises(DataError, match=r"has \d+ tokens, but data.seq_len=256 needs at least 257"):
        load_tokens(cfg, get_tokenizer("bytes"), "train")
    with pytest.raises(DataError, match="needs at least 65"):
        WindowSampler(_data(64), seq_len=64, batch_size=2, seed=0)


def test_bad_corpora_fail_before_tokenizing(tmp_path):
    tok = get_tokenizer("bytes")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    for path, msg in [(tmp_path / "nope.txt", "does not exist"), (empty, "is empty"), (binary, "binary")]:
        with pytest.raises(DataError, match=msg):
            load_tokens(DataConfig(path=str(path), seq_len=8), tok, "train")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_default_corpus_loads(tmp_path):
    data = load_tokens(DataConfig(seq_len=64), get_tokenizer("bytes"), "validation")
    assert 100_000 < len(data) < 120_000
    x, y = WindowSampler(data, 64, 4, seed=0).batch(0)
    assert x.shape == (4, 64)
