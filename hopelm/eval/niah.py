"""Single needle-in-a-haystack, after RULER's S-NIAH tasks (Hsieh et al. 2024, "RULER: What's the
Real Context Size of Your Long-Context Language Models?") and the passkey test of Mohtashami &
Jaggi 2023. The haystack is PG19-mini book text (EVALUATION.md §3).

- passkey (S-NIAH-1): "The pass key is 48213. Remember it. 48213 is the pass key."
- number  (S-NIAH-2): "One of the special magic numbers for {key} is: 4821337." (7 digits)
- uuid    (S-NIAH-3): "One of the special magic uuids for {key} is: {uuid4}."

A prompt of `length` tokens is haystack[:d] + needle + haystack[d:] + query, where d is the
requested depth (fraction of the haystack) moved back to the nearest word boundary. The answer is
" {value}"; scoring is exact match of the greedy-generated answer. Needle and query are encoded
separately from the haystack, so the prompt length in tokens is exact for any tokenizer.
"""
from __future__ import annotations

import functools
import random
import re
import uuid
from pathlib import Path

from hopelm.data.corpus import read_text, split_files
from hopelm.data.tokenizers import Tokenizer, get_tokenizer
from hopelm.eval.runner import Example, data_root

KINDS = ("passkey", "number", "uuid")
WORDS = ("amber apple brave cedar cloud coral delta ember falcon forest garnet harbor island jade "
         "lantern maple meadow nickel oasis orchid pepper quartz raven river saffron silver spruce "
         "summit thistle tiger topaz tundra velvet violet walnut willow winter zephyr").split()


@functools.lru_cache(maxsize=8)
def haystack_text(split: str = "test", root: str | None = None, max_books: int = 4) -> str:
    """Book text of a PG19-mini split with whitespace runs collapsed to one space."""
    path = Path(root) if root else data_root() / "pg19-mini"
    files = split_files(str(path), split)[:max_books]
    return re.sub(r"\s+", " ", " ".join(read_text(f) for f in files))


def make_needle(kind: str, rng: random.Random) -> tuple[str, str, str]:
    """(needle sentence, query, value) for one needle kind."""
    if kind == "passkey":
        v = str(rng.randint(10000, 99999))
        return (f" The pass key is {v}. Remember it. {v} is the pass key. ",
                " What is the pass key? The pass key is", v)
    key = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}"
    if kind == "number":
        v, what = str(rng.randint(1_000_000, 9_999_999)), "number"
    elif kind == "uuid":
        v, what = str(uuid.UUID(int=rng.getrandbits(128), version=4)), "uuid"
    else:
        raise ValueError(f"unknown needle kind {kind!r} (known: {', '.join(KINDS)})")
    return (f" One of the special magic {what}s for {key} is: {v}. ",
            f" What is the special magic {what} for {key} mentioned in the provided text? "
            f"The special magic {what} for {key} mentioned in the provided text is", v)


def _word_boundary(tok: Tokenizer, hay: list[int], d: int) -> int:
    """Move d back (at most 32 tokens) until the token before it ends a word."""
    for j in range(d, max(d - 32, 0), -1):
        if tok.decode(hay[j - 1:j])[-1:] in (" ", ".", ",", ";", "!", "?"):
            return j
    return d


def niah_example(kind: str, length: int, depth: float, rng: random.Random, text: str,
                 tok: Tokenizer) -> Example:
    """One S-NIAH prompt of exactly `length` tokens with its needle at `depth` (0..1)."""
    for _ in range(100):
        needle, query, value = make_needle(kind, rng)
        if value not in text:     # the answer must occur only in the needle
            break
    n_ids, q_ids, a_ids = tok.encode(needle), tok.encode(query), tok.encode(" " + value)
    n_hay = length - len(n_ids) - len(q_ids)
    if n_hay < 0:
        raise ValueError(f"length={length} tokens is shorter than the needle and query.")
    start = rng.randrange(max(len(text) - 8 * n_hay - 1, 1))
    hay = tok.encode(text[start:start + 8 * n_hay + 64])[:n_hay]   # 8 chars/token is plenty
    if len(hay) < n_hay:
        raise ValueError(f"the haystack text is too short for length={length}.")
    d = _word_boundary(tok, hay, round(depth * n_hay))
    prompt = hay[:d] + n_ids + hay[d:] + q_ids
    return Example.qa(prompt, a_ids, f"L={length},d={depth:g}", kind=kind, value=value,
                      needle=needle, query=query, depth=d / max(n_hay, 1), needle_start=d)


class NIAHTask:
    """Train on short haystacks at random depths; test on every (length, depth) cell."""

    def __init__(self, kind: str = "passkey", train_length: int = 512, lengths: tuple[int, ...] = (512, 1024, 2048),
                 depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0), n_test: int = 10,
                 tokenizer: str = "bytes", root: str | None = None):
        self.kind, self.train_length, self.lengths, self.depths, self.n_test = kind, train_length, lengths, depths, n_test
        self.tok = get_tokenizer(tokenizer)
        self.vocab_size = self.tok.vocab_size
        self.root = root
        self.name = f"niah-{kind}"

    def train_batch(self, rng: random.Random, n: int) -> list[Example]:
        text = haystack_text("train", self.root)
        return [niah_example(self.kind, self.train_length, rng.random(), rng, text, self.tok) for _ in range(n)]

    def test_set(self, rng: random.Random) -> list[Example]:
        text = haystack_text("test", self.root)
        return [niah_example(self.kind, L, d, rng, text, self.tok)
                for L in self.lengths for d in self.depths for _ in range(self.n_test)]
