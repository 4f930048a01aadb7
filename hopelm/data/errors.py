"""The one error type of the data package."""
from __future__ import annotations


class DataError(ValueError):
    """A bad corpus, split or tokenizer: one clear sentence, raised before any compute."""
