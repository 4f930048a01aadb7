"""Corpora: a text file, a folder of .txt/.txt.gz documents (optional splits.json), or "hf:<name>".

Splits, per source:
- text file: "train" is the first (1 - val_fraction) of its characters, "validation" the rest (the
  cut moves back to the nearest newline within 1,000 characters, so no line is split).
- folder with splits.json ({"train": [ids], "validation": [...], "test": [...]}, ids = file names
  without .txt/.txt.gz, the PG19-mini layout): exactly the listed documents; unlisted files are unused.
- folder without splits.json: documents sorted by relative path; the last val_fraction of them
  (at least one) are "validation". A folder holding a single document is split like a text file.
- "hf:<name>": the dataset's own splits; if it has no validation/test split, the tail val_fraction
  of the train rows is held out. Each row is one document.
"test" is the corpus' own test part where it has one (splits.json "test", a dataset's "test"
split); otherwise it is the same held-out text as "validation", as there is nothing else unseen.
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

from hopelm.data.errors import DataError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CORPUS = ASSETS / "tinyshakespeare" / "input.txt"
SPLITS = ("train", "validation", "test")
_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}
_SUFFIXES = (".txt.gz", ".txt")


def resolve_path(path: str) -> Path:
    """'' means the vendored TinyShakespeare; '~' is expanded."""
    return DEFAULT_CORPUS if path == "" else Path(path).expanduser()


def normalize_split(split: str) -> str:
    s = _ALIASES.get(split, split)
    if s not in SPLITS:
        raise DataError(f"Unknown split {split!r} (known: train, validation, test).")
    return s


def _doc_id(p: Path) -> str:
    name = p.name
    for suf in _SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return p.stem


def _folder_documents(root: Path) -> list[Path]:
    # rglob: PG19-mini keeps its books one level down (books/<id>.txt.gz).
    files = [p for p in root.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def source_files(path: str) -> list[Path]:
    """Every local file whose content determines the corpus (what a token cache must be keyed on)."""
    p = resolve_path(path)
    if not p.exists():
        raise DataError(f"Data path {str(p)!r} does not exist.")
    if p.is_file():
        return [p]
    files = _folder_documents(p)
    if not files:
        raise DataError(f"Data folder {str(p)!r} contains no .txt or .txt.gz documents.")
    splits = p / "splits.json"
    return files + ([splits] if splits.is_file() else [])


def _read_splits(p: Path) -> dict[str, list[str]]:
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"Cannot read {str(p)!r} as JSON ({e}).") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise DataError(f"{str(p)!r} must map split names to lists of document ids.")
    return {normalize_split(k) if k in _ALIASES else k: [str(i) for i in v] for k, v in raw.items()}


def split_files(path: str, split: str, val_fraction: float = 0.1) -> list[Path]:
    """The files a folder corpus' split reads, without reading them; a text file gives [itself]."""
    split = normalize_split(split)
    files = source_files(path)
    root = resolve_path(path)
    if root.is_file():
        return files
    splits_path = root / "splits.json"
    docs = [f for f in files if f != splits_path]
    if splits_path.is_file():
        splits = _read_splits(splits_path)
        by_id: dict[str, Path] = {}
        for f in docs:
            if _doc_id(f) in by_id:
                raise DataError(f"Data folder {str(root)!r} has two documents with id {_doc_id(f)!r}, so splits.json is ambiguous.")
            by_id[_doc_id(f)] = f
        # Without a test list, test falls back to validation (see the module docstring).
        key = split if split in splits or split != "test" else "validation"
        if key not in splits:
            raise DataError(f"{str(splits_path)!r} has no {split!r} list.")
        missing = [i for i in splits[key] if i not in by_id]
        if missing:
            raise DataError(f"{str(splits_path)!r} lists {len(missing)} document(s) not in the folder, e.g. {missing[0]!r}.")
        return [by_id[i] for i in splits[key]]
    if len(docs) == 1:
        return docs
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    return docs[: len(docs) - n_val] if split == "train" else docs[len(docs) - n_val:]


def _single_document(root: Path) -> bool:
    """A text file, or a folder with one document and no splits.json: split by characters."""
    return root.is_file() or (not (root / "splits.json").is_file() and len(_folder_documents(root)) == 1)


def read_text(p: Path) -> str:
    """Read one .txt or .txt.gz document as UTF-8; binary or undecodable data is a DataError."""
    try:
        if p.name.endswith(".gz"):
            with gzip.open(p, "rb") as f:
                data = f.read()
        else:
            data = p.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"Cannot read {str(p)!r} ({e}).") from None
    # NUL bytes are valid UTF-8 but never occur in text: the usual sign of a binary file.
    if b"\x00" in data:
        raise DataError(f"{str(p)!r} looks binary (it contains NUL bytes); expected UTF-8 text.")
    try:
        return data.decode("utf-8-sig")  # -sig: drop a leading byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{str(p)!r} is not valid UTF-8 text (bad byte at offset {e.start}).") from None


def _cut(text: str, frac: float) -> int:
    """Character offset where the held-out tail starts, moved back to a line start when one is near."""
    cut = int(len(text) * (1.0 - frac))
    nl = text.rfind("\n", max(0, cut - 1000), cut)
    return nl + 1 if nl >= 0 else cut


def read_documents(path: str, split: str, *, val_fraction: float = 0.1, hf_config: str = "",
                   hf_text_field: str = "text") -> list[str]:
    """The documents of one split of a corpus (see the module docstring for the split rules)."""
    split = normalize_split(split)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be in (0, 1).")
    if path.startswith("hf:"):
        return _hf_documents(path[3:], split, val_fraction, hf_config, hf_text_field)
    root = resolve_path(path)
    files = split_files(path, split, val_fraction)
    if _single_document(root):
        text = read_text(files[0])
        if not text.strip():
            raise DataError(f"Corpus {str(files[0])!r} is empty.")
        cut = _cut(text, val_fraction)
        return [text[:cut]] if split == "train" else [text[cut:]]
    texts = [read_text(f) for f in files]
    # An empty document among many adds nothing; a split with no text at all is an error.
    docs = [t for t in texts if t.strip()]
    if not docs:
        raise DataError(f"The {split} split of {str(root)!r} is empty ({len(files)} document(s), no text).")
    return docs


def _hf_documents(name: str, split: str, val_fraction: float, config: str, field: str) -> list[str]:
    try:
        import datasets  # optional: only online users of "hf:" need it
    except ImportError:
        raise DataError(f"Loading 'hf:{name}' needs the `datasets` package (pip install datasets).") from None
    try:
        dd: Any = datasets.load_dataset(name, config or None)
    except Exception as e:  # hub errors come in many types; all mean "cannot get it"
        raise DataError(f"Cannot load Hugging Face dataset {name!r} (offline or unknown name?): {type(e).__name__}: {e}") from None
    held_order = {"validation": ("validation", "valid", "test"), "test": ("test", "validation", "valid")}
    held = [s for s in ("validation", "valid", "test") if s in dd]
    if split == "train" or not held:
        if "train" not in dd:
            raise DataError(f"Hugging Face dataset {name!r} has no train split (it has: {', '.join(dd)}).")
        ds = dd["train"]
        if not held:  # no held-out split of its own: hold out the tail of train
            cut = int(len(ds) * (1.0 - val_fraction))
            ds = ds.select(range(cut)) if split == "train" else ds.select(range(cut, len(ds)))
    else:
        ds = dd[next(s for s in held_order[split] if s in dd)]
    if field not in ds.column_names:
        raise DataError(f"Hugging Face dataset {name!r} has no text field {field!r} (fields: {', '.join(ds.column_names)}).")
    docs = [t for t in ds[field] if isinstance(t, str) and t.strip()]
    if not docs:
        raise DataError(f"The {split} split of Hugging Face dataset {name!r} is empty.")
    return docs


__all__ = ["read_documents", "read_text", "source_files", "split_files", "resolve_path",
           "normalize_split", "DEFAULT_CORPUS", "SPLITS"]
