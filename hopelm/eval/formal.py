"""Formal-language recognition with length generalization (NL Table 5; the setup of Irie, Csordás &
Schmidhuber 2023, "Practical Computational Power of Linear Transformers and Their Recurrent and
Self-Referential Extensions", after Bhattamishra et al. 2020 and Delétang et al. 2023).

Languages: parity (even number of 1s over {0,1}), (aa)*, (abab)*, aⁿbⁿ, aⁿbⁿcⁿ and shuffle-2
(interleavings of two Dyck-1 languages over "()" and "[]"). The model reads BOS, the string and
SEP, and must answer ACC or REJ. Training strings have lengths 1–40 (bin 0); test bin 1 holds
lengths 41–100 (more bins can be given). Half the examples are members; non-members are mostly
near misses (one edit of a member), so counting symbols is not enough. Every label is computed by
`member`, never assumed from how the string was made.
"""
from __future__ import annotations

import random

from hopelm.eval.runner import Example

LANGUAGES = ("parity", "aa", "abab", "anbn", "anbncn", "shuffle2")
ALPHABET = {"parity": "01", "aa": "a", "abab": "ab", "anbn": "ab", "anbncn": "abc", "shuffle2": "()[]"}
PAD, BOS, SEP, ACC, REJ = 0, 1, 2, 3, 4
CHARS = "01abc()[]"
VOCAB_SIZE = 5 + len(CHARS)
TRAIN_BIN = (1, 40)
TEST_BINS = ((1, 40), (41, 100))


def _dyck1_ok(s: str, open_: str, close: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch == open_) - (ch == close)
        if depth < 0:
            return False
    return depth == 0


def member(lang: str, s: str) -> bool:
    """Membership of string s in the language."""
    n = len(s)
    if lang == "parity":
        return set(s) <= set("01") and s.count("1") % 2 == 0
    if lang == "aa":
        return set(s) <= {"a"} and n % 2 == 0
    if lang == "abab":
        return n % 4 == 0 and s == "abab" * (n // 4)
    if lang == "anbn":
        return n % 2 == 0 and s == "a" * (n // 2) + "b" * (n // 2)
    if lang == "anbncn":
        return n % 3 == 0 and s == "a" * (n // 3) + "b" * (n // 3) + "c" * (n // 3)
    if lang == "shuffle2":
        return set(s) <= set("()[]") and _dyck1_ok(s, "(", ")") and _dyck1_ok(s, "[", "]")
    raise ValueError(f"unknown language {lang!r} (known: {', '.join(LANGUAGES)})")


def _dyck1(rng: random.Random, pairs: int, open_: str, close: str) -> list[str]:
    """A random balanced word with `pairs` pairs (open whenever allowed with prob 1/2)."""
    out, depth, left = [], 0, pairs
    while left or depth:
        if left and (depth == 0 or rng.random() < 0.5):
            out.append(open_); left -= 1; depth += 1
        else:
            out.append(close); depth -= 1
    return out


def positive(lang: str, rng: random.Random, lo: int, hi: int) -> str | None:
    """A random member with length in [lo, hi], or None when the range holds none."""
    step = {"parity": 1, "aa": 2, "abab": 4, "anbn": 2, "anbncn": 3, "shuffle2": 2}[lang]
    lengths = [n for n in range(max(lo, 1), hi + 1) if n % step == 0]
    if not lengths:
        return None
    n = rng.choice(lengths)
    if lang == "parity":
        bits = [rng.choice("01") for _ in range(n - 1)]
        return "".join(bits) + ("1" if bits.count("1") % 2 else "0")
    if lang == "aa":
        return "a" * n
    if lang == "abab":
        return "abab" * (n // 4)
    if lang == "anbn":
        return "a" * (n // 2) + "b" * (n // 2)
    if lang == "anbncn":
        return "a" * (n // 3) + "b" * (n // 3) + "c" * (n // 3)
    k = rng.randint(0, n // 2)                     # shuffle2: pairs of "()" and of "[]"
    a, b = _dyck1(rng, k, "(", ")"), _dyck1(rng, n // 2 - k, "[", "]")
    merged, i, j = [], 0, 0                         # a uniformly random interleaving
    for take_a in rng.sample([True] * len(a) + [False] * len(b), len(a) + len(b)):
        if take_a:
            merged.append(a[i]); i += 1
        else:
            merged.append(b[j]); j += 1
    return "".join(merged)


def negative(lang: str, rng: random.Random, lo: int, hi: int) -> str:
    """A non-member with length in [lo, hi]: usually one edit (substitute, swap, delete, insert,
    or a change of n in one block) of a member, else a random string."""
    alpha = ALPHABET[lang]
    for _ in range(200):
        if rng.random() < 0.8:
            s = list(positive(lang, rng, max(lo - 1, 1), hi + 1) or "")
            op = rng.randrange(4)
            i = rng.randrange(len(s) + 1)
            if op == 0 and s and len(alpha) > 1:
                i = min(i, len(s) - 1)
                s[i] = rng.choice([c for c in alpha if c != s[i]])
            elif op == 1 and len(s) > 1:
                i = min(i, len(s) - 2)
                s[i], s[i + 1] = s[i + 1], s[i]
            elif op == 2 and s:
                del s[min(i, len(s) - 1)]
            else:
                s.insert(i, rng.choice(alpha))
            s = "".join(s)
        else:
            s = "".join(rng.choice(alpha) for _ in range(rng.randint(lo, hi)))
        if lo <= len(s) <= hi and not member(lang, s):
            return s
    raise RuntimeError(f"no non-member of {lang} found with length in [{lo}, {hi}]")


def sample(lang: str, rng: random.Random, lo: int, hi: int) -> tuple[str, bool]:
    """A balanced draw: a member or a non-member with probability 1/2 each."""
    s = positive(lang, rng, lo, hi) if rng.random() < 0.5 else None
    s = s if s is not None else negative(lang, rng, lo, hi)
    return s, member(lang, s)


def encode(s: str, label: bool, bin: str = "") -> Example:
    return Example.qa([BOS] + [5 + CHARS.index(c) for c in s] + [SEP], [ACC if label else REJ], bin,
                      string=s, label=label)


class FormalTask:
    """Accept/reject of one language: train on lengths in TRAIN_BIN, test on every bin."""

    vocab_size = VOCAB_SIZE

    def __init__(self, lang: str, train_bin: tuple[int, int] = TRAIN_BIN,
                 test_bins: tuple[tuple[int, int], ...] = TEST_BINS, n_test: int = 200):
        if lang not in LANGUAGES:
            raise ValueError(f"unknown language {lang!r} (known: {', '.join(LANGUAGES)})")
        self.lang, self.train_bin, self.test_bins, self.n_test = lang, train_bin, test_bins, n_test
        self.name = f"formal-{lang}"

    def train_batch(self, rng: random.Random, n: int) -> list[Example]:
        return [encode(*sample(self.lang, rng, *self.train_bin)) for _ in range(n)]

    def test_set(self, rng: random.Random) -> list[Example]:
        return [encode(*sample(self.lang, rng, lo, hi), bin=f"bin{k} ({lo}-{hi})")
                for k, (lo, hi) in enumerate(self.test_bins) for _ in range(self.n_test)]
