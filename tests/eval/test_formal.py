"""Formal-language generators: every label checked by an independent regex or automaton."""
from __future__ import annotations

import random
import re

import pytest

from hopelm.eval.formal import (ACC, BOS, CHARS, LANGUAGES, REJ, SEP, FormalTask, encode, negative,
                                positive, sample)


def _counter_anbn(s: str) -> bool:            # a one-counter automaton
    count, phase = 0, "a"
    for ch in s:
        if ch == "a" and phase == "a":
            count += 1
        elif ch == "b" and count > 0:
            phase, count = "b", count - 1
        else:
            return False
    return phase == "b" and count == 0


def _anbncn(s: str) -> bool:
    m = re.fullmatch(r"(a+)(b+)(c+)", s)
    return bool(m) and len(m.group(1)) == len(m.group(2)) == len(m.group(3))


def _shuffle2(s: str) -> bool:                 # two counters, never negative, both end at 0
    c = {"(": 0, "[": 0}
    for ch in s:
        k = {"(": "(", ")": "(", "[": "[", "]": "["}.get(ch)
        if k is None:
            return False
        c[k] += 1 if ch in "([" else -1
        if c[k] < 0:
            return False
    return c["("] == 0 and c["["] == 0


ORACLE = {
    "parity": lambda s: re.fullmatch(r"(0*10*1)*0*", s) is not None,
    "aa": lambda s: re.fullmatch(r"(aa)*", s) is not None,
    "abab": lambda s: re.fullmatch(r"(abab)*", s) is not None,
    "anbn": _counter_anbn,
    "anbncn": _anbncn,
    "shuffle2": _shuffle2,
}


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("lo,hi", [(1, 40), (41, 100)])
def test_labels_match_independent_oracle(lang, lo, hi):
    rng = random.Random(0)
    draws = [sample(lang, rng, lo, hi) for _ in range(1500)]
    for s, label in draws:
        assert lo <= len(s) <= hi
        assert label == ORACLE[lang](s), (lang, s, label)
    share = sum(l for _, l in draws) / len(draws)
    assert 0.4 < share < 0.6                       # balanced classes
    assert all(ORACLE[lang](positive(lang, rng, lo, hi)) for _ in range(200))
    assert not any(ORACLE[lang](negative(lang, rng, lo, hi)) for _ in range(200))


def test_negatives_are_mostly_near_misses():
    # aⁿbⁿ negatives must not be separable by the alphabet or by length parity alone.
    rng = random.Random(1)
    negs = [negative("anbn", rng, 41, 100) for _ in range(500)]
    assert sum(len(s) % 2 == 0 for s in negs) > 100
    assert sum(set(s) == {"a", "b"} for s in negs) > 400


def test_encoding_and_bins_are_deterministic():
    e = encode("abab", True)
    assert e.tokens[:e.prompt_len] == [BOS] + [5 + CHARS.index(c) for c in "abab"] + [SEP]
    assert e.meta["answer"] == [ACC] and encode("ab", False).meta["answer"] == [REJ]
    t = FormalTask("anbn", n_test=10)
    a, b = t.test_set(random.Random(3)), t.test_set(random.Random(3))
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert sorted({x.bin for x in a}) == ["bin0 (1-40)", "bin1 (41-100)"]
    assert all(len(x.meta["string"]) <= 40 for x in t.train_batch(random.Random(0), 200))
