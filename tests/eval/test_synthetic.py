"""MQAR and MAD generators produce exactly the tasks they describe."""
from __future__ import annotations

import random

import pytest

from hopelm.eval.runner import IGNORE
from hopelm.eval.synthetic import COMPRESS, FILL, SEP, MADTask, MQARTask


@pytest.mark.parametrize("T,n", [(64, 4), (128, 16), (256, 64)])
def test_mqar_queries_recall_their_pairs(T, n):
    task = MQARTask(vocab_size=8192, configs=((T, n),))
    e = task.example(random.Random(0), T, n)
    assert len(e.tokens) == len(e.targets) == T
    keys, values = e.tokens[0:2 * n:2], e.tokens[1:2 * n:2]
    assert len(set(keys)) == n and all(0 < k < 4096 for k in keys) and all(v >= 4096 for v in values)
    pairs = dict(zip(keys, values))
    queries = [(p, t) for p, t in enumerate(e.targets) if t != IGNORE]
    assert len(queries) == n and all(p >= 2 * n for p, _ in queries)
    assert sorted(e.tokens[p] for p, _ in queries) == sorted(keys)      # every key asked once
    assert all(pairs[e.tokens[p]] == t for p, t in queries)
    assert all(e.tokens[p] == FILL for p in range(2 * n, T) if e.targets[p] == IGNORE)
    again = task.example(random.Random(0), T, n)
    assert again.tokens == e.tokens and again.targets == e.targets


def test_mad_tasks():
    rng = random.Random(0)
    e = MADTask("selective_copy").example(rng)
    prompt = e.tokens[:e.prompt_len]
    assert prompt[-1] == SEP and e.meta["answer"] == [t for t in prompt[:-1] if t != FILL]
    for kind in ("in_context_recall", "fuzzy_recall"):
        for _ in range(20):
            e = MADTask(kind).example(rng)
            prompt, ans = e.tokens[:e.prompt_len], e.meta["answer"]
            # the answer follows an earlier occurrence of the query key in the prompt
            mid = 3 + (64 - 3) // 2
            k = len(prompt)
            while k > 0 and prompt[k - 1] < mid:
                k -= 1
            key = prompt[k:]
            hits = [i for i in range(k - len(key)) if prompt[i:i + len(key)] == key
                    and (i == 0 or prompt[i - 1] >= mid) and prompt[i + len(key)] >= mid]
            assert hits and all(prompt[i + len(key):i + len(key) + len(ans)] == ans for i in hits)
    e = MADTask("compression").example(rng)
    assert e.tokens[e.prompt_len - 1] == COMPRESS and e.meta["answer"] == e.tokens[:e.prompt_len - 1]
    task = MADTask("memorization")
    for e in task.train_batch(rng, 5):
        for p, t in enumerate(e.targets):
            if t != IGNORE:
                assert task.table[e.tokens[p]] == t
