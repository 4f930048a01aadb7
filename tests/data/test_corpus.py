"""Corpora: text files, folders with splits.json and .txt.gz, PG19-mini, clear errors."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from hopelm.data import DataError, read_documents
from hopelm.data.corpus import DEFAULT_CORPUS, read_text, split_files

PG19 = Path(__file__).resolve().parents[3] / "shared" / "data" / "pg19-mini"


def _write_folder(root: Path, with_splits: bool = True) -> None:
    (root / "books").mkdir(parents=True)
    for i in range(1, 6):
        text = f"Document {i}.\n" + "word " * (10 * i) + "\n"
        if i % 2:
            with gzip.open(root / "books" / f"{i}.txt.gz", "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            (root / "books" / f"{i}.txt").write_text(text, encoding="utf-8")
    (root / "SOURCES.md").write_text("not a document")
    if with_splits:
        (root / "splits.json").write_text(json.dumps({"train": [1, 2, 3], "validation": [4], "test": [5]}))


def test_text_file_split(tmp_path):
    f = tmp_path / "a.txt"
    lines = [f"line {i}\n" for i in range(1000)]
    f.write_text("".join(lines), encoding="utf-8")
    (train,) = read_documents(str(f), "train", val_fraction=0.1)
    (val,) = read_documents(str(f), "validation", val_fraction=0.1)
    assert train + val == f.read_text() and train.endswith("\n")  # cut at a line boundary
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 0.01
    # A single file has no test part of its own: test is the held-out validation text.
    assert read_documents(str(f), "test", val_fraction=0.1) == [val]


def test_default_corpus_is_vendored_tinyshakespeare():
    assert DEFAULT_CORPUS.is_file()
    (val,) = read_documents("", "validation")
    assert 100_000 < len(val) < 120_000


def test_folder_with_splits_json(tmp_path):
    _write_folder(tmp_path)
    train = read_documents(str(tmp_path), "train")
    assert [d.splitlines()[0] for d in train] == ["Document 1.", "Document 2.", "Document 3."]
    assert read_documents(str(tmp_path), "validation")[0].startswith("Document 4.")
    assert read_documents(str(tmp_path), "test")[0].startswith("Document 5.")
    assert read_documents(str(tmp_path), "val") == read_documents(str(tmp_path), "validation")


def test_folder_without_splits_json(tmp_path):
    _write_folder(tmp_path, with_splits=False)
    train = read_documents(str(tmp_path), "train", val_fraction=0.2)
    val = read_documents(str(tmp_path), "validation", val_fraction=0.2)
    assert len(train) == 4 and len(val) == 1 and val[0].startswith("Document 5.")
    assert read_documents(str(tmp_path), "test", val_fraction=0.2) == val


def test_bad_splits_json(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "splits.json").write_text(json.dumps({"train": [1, 99], "validation": [4]}))
    with pytest.raises(DataError, match="not in the folder"):
        read_documents(str(tmp_path), "train")
    # No "test" list: test falls back to validation.
    assert read_documents(str(tmp_path), "test") == read_documents(str(tmp_path), "validation")


@pytest.mark.skipif(not (PG19 / "splits.json").is_file(), reason="../shared/data/pg19-mini not present")
def test_pg19_mini_layout():
    splits = json.loads((PG19 / "splits.json").read_text())
    for split in ("train", "validation", "test"):
        files = split_files(str(PG19), split)
        assert [f.name for f in files] == [f"{i}.txt.gz" for i in splits[split]]
    # Read only the smallest test book, not the corpus.
    smallest = min(split_files(str(PG19), "test"), key=lambda p: p.stat().st_size)
    text = read_text(smallest)
    assert len(text) > 10_000 and "\x00" not in text


def test_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_documents(str(tmp_path / "missing.txt"), "train")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.txt.*is empty"):
        read_documents(str(empty), "train")
    (tmp_path / "nodocs").mkdir()
    with pytest.raises(DataError, match="no .txt or .txt.gz documents"):
        read_documents(str(tmp_path / "nodocs"), "train")
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"hello\x00\x01\x02world")
    with pytest.raises(DataError, match="nul.txt.*binary"):
        read_documents(str(nul), "train")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match="latin.txt.*not valid UTF-8"):
        read_documents(str(latin), "train")
    badgz = tmp_path / "gz"
    badgz.mkdir()
    (badgz / "a.txt.gz").write_bytes(b"not gzip at all")
    (badgz / "b.txt").write_text("fine")
    with pytest.raises(DataError, match="a.txt.gz"):
        read_documents(str(badgz), "train", val_fraction=0.5)
    with pytest.raises(DataError, match="Unknown split"):
        read_documents(str(DEFAULT_CORPUS), "dev-test")


def test_hf_without_datasets_is_a_clear_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DataError, match="needs the `datasets` package"):
        read_documents("hf:some/dataset", "train")


class _FakeDataset:
    def __init__(self, rows):
        self.rows, self.column_names = rows, ["text"]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, field):
        return [r[field] for r in self.rows]

    def select(self, idx):
        return _FakeDataset([self.rows[i] for i in idx])


def test_hf_splits_with_a_fake_datasets_module(monkeypatch):
    import sys
    import types
    rows = [{"text": f"row {i}"} for i in range(10)] + [{"text": "  "}]
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config))
        if name == "with-val":
            return {"train": _FakeDataset(rows), "validation": _FakeDataset(rows[:2])}
        if name == "train-only":
            return {"train": _FakeDataset(rows[:10])}
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert read_documents("hf:with-val", "train", hf_config="c") == [f"row {i}" for i in range(10)]
    assert read_documents("hf:with-val", "test") == ["row 0", "row 1"]  # no test split: validation
    assert calls[0] == ("with-val", "c")
    assert read_documents("hf:train-only", "train", val_fraction=0.2) == [f"row {i}" for i in range(8)]
    assert read_documents("hf:train-only", "validation", val_fraction=0.2) == ["row 8", "row 9"]
    with pytest.raises(DataError, match="no text field 'body'"):
        read_documents("hf:with-val", "train", hf_text_field="body")
    with pytest.raises(DataError, match="Cannot load Hugging Face dataset 'gone'"):
        read_documents("hf:gone", "train")
