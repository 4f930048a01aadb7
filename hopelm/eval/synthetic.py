"""Synthetic memory tasks: MQAR (Zoology) and MAD-style tasks.

- MQAR, multi-query associative recall (Arora et al. 2023, "Zoology", `multiquery_ar`): the
  sequence opens with N key-value pairs (keys from the lower half of the vocabulary, values from
  the upper half, both drawn without replacement), then the keys are asked again at positions whose
  gaps follow Zoology's power law (p(g) ∝ g^(a−1), a = 0.01), filler token 0 elsewhere; at each
  query the model must emit that key's value. Accuracy is over query positions, as in Zoology.
- MAD tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"):
  selective copying, in-context recall, fuzzy recall (multi-token keys and values), compression
  and memorization. Compression is cast autoregressively here: after a COMPRESS token the model
  must reproduce the whole sequence, which needs everything to pass through the state at that
  token; MAD instead decodes the compression token's output with a separate MLP.
"""
from __future__ import annotations

import random

from hopelm.eval.runner import IGNORE, Example

FILL, SEP, COMPRESS = 0, 1, 2      # MAD special tokens; content tokens start at 3


class MQARTask:
    """MQAR on a mixture of (sequence length, number of pairs) configurations; one test bin each."""

    def __init__(self, vocab_size: int = 8192, configs: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16)),
                 n_test: int = 100, power_a: float = 0.01):
        for T, n in configs:
            if 4 * n > T:
                raise ValueError(f"MQAR needs seq_len >= 4 * num_kv_pairs (got {T} and {n}).")
            if n > vocab_size // 2 - 1:
                raise ValueError(f"MQAR with {n} pairs needs vocab_size > {2 * n + 2}.")
        self.vocab_size, self.configs, self.n_test, self.power_a = vocab_size, configs, n_test, power_a
        self.name = "mqar"

    def example(self, rng: random.Random, seq_len: int, n_pairs: int) -> Example:
        half = self.vocab_size // 2
        keys = rng.sample(range(1, half), n_pairs)
        values = rng.sample(range(half, self.vocab_size), n_pairs)
        context = 2 * n_pairs
        space = (seq_len - context) // 2                       # query slots at even offsets
        w = [self.power_a * g ** (self.power_a - 1) for g in range(1, space + 1)]
        gaps: list[int] = []
        while len(gaps) < n_pairs:                             # weighted draw without replacement
            g = rng.choices(range(space), weights=w)[0]
            if g not in gaps:
                gaps.append(g)
        tokens = [t for kv in zip(keys, values) for t in kv] + [FILL] * (seq_len - context)
        targets = [IGNORE] * seq_len
        for k, v, g in zip(keys, values, gaps):
            tokens[context + 2 * g] = k
            targets[context + 2 * g] = v
        return Example(tokens, targets, f"T={seq_len},kv={n_pairs}")

    def train_batch(self, rng: random.Random, n: int) -> list[Example]:
        return [self.example(rng, *rng.choice(self.configs)) for _ in range(n)]

    def test_set(self, rng: random.Random) -> list[Example]:
        return [self.example(rng, T, k) for T, k in self.configs for _ in range(self.n_test)]


# --------------------------------------------------------------------------------------------
# MAD-style tasks: every generator is f(rng, vocab_size, seq_len) -> Example
def selective_copy(rng: random.Random, vocab: int, seq_len: int, n_copy: int = 8) -> Example:
    """Content tokens scattered among FILL tokens; after SEP, output them in order."""
    content = [rng.randrange(3, vocab) for _ in range(n_copy)]
    where = sorted(rng.sample(range(seq_len - n_copy - 1), n_copy))
    seq = [FILL] * (seq_len - n_copy - 1)
    for p, t in zip(where, content):
        seq[p] = t
    return Example.qa(seq + [SEP], content)


def _pairs(rng: random.Random, vocab: int, seq_len: int, klen: tuple[int, int], vlen: tuple[int, int]):
    """Keys from the lower half of the content vocabulary, values from the upper half."""
    mid = 3 + (vocab - 3) // 2
    mapping: dict[tuple[int, ...], list[int]] = {}
    seq: list[int] = []
    while True:
        key = tuple(rng.randrange(3, mid) for _ in range(rng.randint(*klen)))
        value = mapping.get(key) or [rng.randrange(mid, vocab) for _ in range(rng.randint(*vlen))]
        if len(seq) + len(key) + len(value) > seq_len:
            return seq, mapping
        mapping[key] = value
        seq += list(key) + value


def in_context_recall(rng: random.Random, vocab: int, seq_len: int) -> Example:
    """Key-value pairs (keys may repeat, the binding is fixed within a sequence); then a key seen
    in the sequence, and the model must give its value."""
    seq, mapping = _pairs(rng, vocab, seq_len - 1, (1, 1), (1, 1))
    key = rng.choice(list(mapping))
    return Example.qa(seq + list(key), mapping[key])


def fuzzy_recall(rng: random.Random, vocab: int, seq_len: int) -> Example:
    """As in-context recall, with keys and values of 1–3 tokens each."""
    seq, mapping = _pairs(rng, vocab, seq_len - 6, (1, 3), (1, 3))
    key = rng.choice(list(mapping))
    return Example.qa(seq + list(key), mapping[key])


def compression(rng: random.Random, vocab: int, seq_len: int) -> Example:
    """Random tokens, then COMPRESS; the model reproduces the sequence from its state."""
    n = seq_len // 2
    seq = [rng.randrange(3, vocab) for _ in range(n)]
    return Example.qa(seq + [COMPRESS], seq)


class MADTask:
    """One MAD-style task; `memorization` uses a fixed key->value table drawn from `table_seed`
    (facts to store in the weights: train and test share the table, as in MAD)."""

    KINDS = ("selective_copy", "in_context_recall", "fuzzy_recall", "compression", "memorization")

    def __init__(self, kind: str, vocab_size: int = 64, seq_len: int = 64, n_test: int = 200,
                 n_facts: int = 256, table_seed: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown MAD task {kind!r} (known: {', '.join(self.KINDS)})")
        self.kind, self.seq_len, self.n_test = kind, seq_len, n_test
        self.name = f"mad-{kind}"
        self.vocab_size = vocab_size
        if kind == "memorization":    # keys and values get their own token ranges
            self.vocab_size = 3 + 2 * n_facts if vocab_size < 3 + 2 * n_facts else vocab_size
            t = random.Random(f"memorization/{table_seed}")
            self.table = {3 + k: 3 + n_facts + t.randrange(n_facts) for k in range(n_facts)}

    def example(self, rng: random.Random) -> Example:
        if self.kind == "memorization":   # k1 v1 k2 v2 ...: every value is recalled from the weights
            keys = rng.sample(sorted(self.table), min(self.seq_len // 2, len(self.table)))
            tokens = [t for k in keys for t in (k, self.table[k])]
            targets = [t for k in keys for t in (self.table[k], IGNORE)]
            return Example(tokens[:-1], targets[:-1], f"L={self.seq_len}")
        fn = {"selective_copy": selective_copy, "in_context_recall": in_context_recall,
              "fuzzy_recall": fuzzy_recall, "compression": compression}[self.kind]
        e = fn(rng, self.vocab_size, self.seq_len)
        e.bin = f"L={self.seq_len}"
        return e

    def train_batch(self, rng: random.Random, n: int) -> list[Example]:
        return [self.example(rng) for _ in range(n)]

    def test_set(self, rng: random.Random) -> list[Example]:
        return [self.example(rng) for _ in range(self.n_test)]
