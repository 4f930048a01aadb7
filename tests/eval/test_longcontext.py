"""S-NIAH prompts hold their needle once at the requested depth; bAbI parsing matches the files."""
from __future__ import annotations

import random
import tarfile

import pytest

from hopelm.data import get_tokenizer
from hopelm.eval.babilong import TASKS, BabilongTask, Sample, babilong_example, load_babi
from hopelm.eval.niah import KINDS, haystack_text, niah_example

from .conftest import DATA, need

TOK = get_tokenizer("bytes")


@need("pg19-mini")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [300, 2048])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_niah_needle_once_at_depth(kind, length, depth):
    text = haystack_text("test")
    e = niah_example(kind, length, depth, random.Random(length + int(depth * 10)), text, TOK)
    prompt = e.tokens[:e.prompt_len]
    assert len(prompt) == length                          # exact length in tokens
    s, needle, value = TOK.decode(prompt), e.meta["needle"], e.meta["value"]
    assert s.count(needle) == 1
    assert s.count(value) == needle.count(value)          # the value occurs only inside the needle
    n_ids, q_ids = TOK.encode(needle), TOK.encode(e.meta["query"])
    at = [i for i in range(len(prompt)) if prompt[i:i + len(n_ids)] == n_ids]
    assert at == [e.meta["needle_start"]] and prompt[-len(q_ids):] == q_ids
    n_hay = length - len(n_ids) - len(q_ids)
    assert abs(at[0] / n_hay - depth) <= 32 / n_hay       # snapped back to a word boundary
    assert TOK.decode(e.meta["answer"]) == " " + value


@need("pg19-mini")
def test_niah_other_tokenizer_exact_length():
    tok = get_tokenizer("gpt2")
    e = niah_example("uuid", 700, 0.3, random.Random(0), haystack_text("test"), tok)
    assert e.prompt_len == 700 and tok.decode(e.tokens[:700]).count(e.meta["needle"].strip()) == 1


def _count_questions(task: int, split: str) -> tuple[int, int]:
    """Independent count: question lines (tab-separated) and story starts (line number 1)."""
    name = f"tasks_1-20_v1-2/en/qa{task}_{TASKS[task]}_{split}.txt"
    with tarfile.open(DATA / "babi" / "tasks_1-20_v1-2_en.tar.gz") as tar:
        lines = tar.extractfile(name).read().decode().splitlines()
    return sum("\t" in l for l in lines), sum(l.startswith("1 ") for l in lines)


@need("babi")
@pytest.mark.parametrize("task", [1, 2, 3, 4, 5])
def test_babi_counts(task):
    for split in ("train", "test"):
        samples = load_babi(task, split)
        questions, stories = _count_questions(task, split)
        assert len(samples) == questions == 1000
        assert sum(len(s.facts) == 0 or s is samples[0] for s in samples) >= 1
        assert all(s.answer and s.question.endswith("?") and s.supporting for s in samples)
        assert all(0 <= i < len(s.facts) for s in samples for i in s.supporting)


@need("babi")
def test_babi_first_story_of_qa1():
    s = load_babi(1, "train")
    assert s[0] == Sample(("Mary moved to the bathroom.", "John went to the hallway."), "Where is Mary?", "bathroom", (0,))
    assert s[1] == Sample(("Mary moved to the bathroom.", "John went to the hallway.", "Daniel went back to the hallway.",
                           "Sandra moved to the garden."), "Where is Daniel?", "hallway", (2,))
    assert s[4].question == "Where is Sandra?" and s[4].answer == "bathroom" and len(s[4].facts) == 10
    assert s[5].facts == ("Sandra travelled to the office.", "Sandra went to the bathroom.")   # new story
    assert load_babi(2, "test")[0].supporting == (0, 3)


@need("babi")
@need("pg19-mini")
@pytest.mark.parametrize("length", [0, 512, 2048])
def test_babilong_facts_in_order(length):
    s = load_babi(2, "test")[7]
    e = babilong_example(s, length, random.Random(0), haystack_text("test"), TOK)
    text = TOK.decode(e.tokens[:e.prompt_len])
    pos = [text.index(f) for f in s.facts]
    assert pos == sorted(pos) and text.endswith(f" Question: {s.question} Answer:")
    bare = sum(len(TOK.encode(" " + f)) for f in s.facts) + len(TOK.encode(f" Question: {s.question} Answer:"))
    assert e.prompt_len == max(length, bare)              # facts that do not fit are all kept
    assert TOK.decode(e.meta["answer"]) == " " + s.answer
    t = BabilongTask((1, 4), lengths=(0, 256), n_test=3)
    assert sorted({x.bin for x in t.test_set(random.Random(0))}) == ["qa1,L=0", "qa1,L=256", "qa4,L=0", "qa4,L=256"]
