"""BABILong-style reasoning in a haystack (Kuratov et al. 2024, "BABILong: Testing the Limits of LLMs
with Long Context Reasoning-in-a-Haystack"), built from the bAbI v1.2 tasks qa1–qa5 (Weston et al.
2015) in `../shared/data/babi` and PG19-mini background text.

bAbI files hold stories: numbered lines, numbering restarting at 1 for a new story; a question line
is "id question<TAB>answer<TAB>supporting ids". As in BABILong, each question is one sample whose
context is every fact of its story before it. A sample of `length` tokens scatters those facts, in
order, at random word boundaries of a background span, then asks "Question: ... Answer:"; length 0
is the facts alone (BABILong's "0k"). Scoring is exact match of the generated answer word.
"""
from __future__ import annotations

import functools
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from hopelm.data.tokenizers import Tokenizer, get_tokenizer
from hopelm.eval.niah import _word_boundary, haystack_text
from hopelm.eval.runner import Example, data_root

TASKS = {1: "single-supporting-fact", 2: "two-supporting-facts", 3: "three-supporting-facts",
         4: "two-arg-relations", 5: "three-arg-relations"}


@dataclass(frozen=True)
class Sample:
    facts: tuple[str, ...]       # the story's facts before the question, in order
    question: str
    answer: str
    supporting: tuple[int, ...]  # indices into facts


def parse_babi(text: str) -> list[Sample]:
    """All question samples of one bAbI file."""
    samples: list[Sample] = []
    facts: list[str] = []
    line_to_fact: dict[int, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        num, rest = line.split(" ", 1)
        if int(num) == 1:
            facts, line_to_fact = [], {}
        if "\t" in rest:
            q, a, sup = rest.split("\t")
            samples.append(Sample(tuple(facts), q.strip(), a.strip(),
                                  tuple(line_to_fact[int(s)] for s in sup.split())))
        else:
            line_to_fact[int(num)] = len(facts)
            facts.append(rest.strip())
    return samples


@functools.lru_cache(maxsize=32)
def load_babi(task: int, split: str = "train", root: str | None = None, tenk: bool = False) -> tuple[Sample, ...]:
    """Samples of bAbI task `task` (1–5) and split "train" | "test" from the v1.2 tarball."""
    base = Path(root) if root else data_root() / "babi"
    archive = base / ("tasks_1-20_v1-2_en-10k.tar.gz" if tenk else "tasks_1-20_v1-2_en.tar.gz")
    member = f"tasks_1-20_v1-2/{'en-10k' if tenk else 'en'}/qa{task}_{TASKS[task]}_{split}.txt"
    if not archive.is_file():
        raise FileNotFoundError(f"bAbI archive {str(archive)!r} not found (set HOPELM_DATA or pass root).")
    with tarfile.open(archive) as tar:
        try:
            f = tar.extractfile(member)
        except KeyError:
            raise FileNotFoundError(f"{member} is not in {archive.name} (see babi/SOURCES.md).") from None
        return tuple(parse_babi(f.read().decode("utf-8")))


def babilong_test_indices(task: int, root: str | None = None) -> list[int]:
    """The 100 test samples per task that BABILong evaluates on."""
    base = Path(root) if root else data_root() / "babi"
    return json.loads((base / "babilong_test_100_idxs.json").read_text())[f"qa{task}"]


def babilong_example(s: Sample, length: int, rng: random.Random, text: str, tok: Tokenizer,
                     bin: str = "") -> Example:
    """Facts of `s` scattered in background text; `length` tokens in all (0: no background)."""
    facts = [tok.encode(" " + f) for f in s.facts]
    q_ids, a_ids = tok.encode(f" Question: {s.question} Answer:"), tok.encode(" " + s.answer)
    n_bg = max(length - sum(map(len, facts)) - len(q_ids), 0) if length else 0
    bg: list[int] = []
    if n_bg:
        start = rng.randrange(max(len(text) - 8 * n_bg - 1, 1))
        bg = tok.encode(text[start:start + 8 * n_bg + 64])[:n_bg]
    cuts = sorted(_word_boundary(tok, bg, rng.randint(0, len(bg))) if bg else 0 for _ in facts)
    prompt, prev = [], 0
    for c, f in zip(cuts, facts):
        prompt += bg[prev:c] + f
        prev = c
    prompt += bg[prev:] + q_ids
    return Example.qa(prompt, a_ids, bin, answer_text=s.answer)


class BabilongTask:
    """Train on bAbI train samples at `train_length`; test on test samples at every length."""

    def __init__(self, tasks: tuple[int, ...] = (1, 2, 3, 4, 5), train_length: int = 0,
                 lengths: tuple[int, ...] = (0, 1024, 2048), n_test: int = 20, tokenizer: str = "bytes",
                 root: str | None = None, pg19_root: str | None = None):
        self.tasks, self.train_length, self.lengths, self.n_test = tasks, train_length, lengths, n_test
        self.tok = get_tokenizer(tokenizer)
        self.vocab_size = self.tok.vocab_size
        self.root, self.pg19_root = root, pg19_root
        self.name = "babilong-" + "".join(f"qa{t}" for t in tasks)

    def train_batch(self, rng: random.Random, n: int) -> list[Example]:
        text = haystack_text("train", self.pg19_root)
        out = []
        for _ in range(n):
            t = rng.choice(self.tasks)   # qa3's 1k train file exists; its 10k one does not
            out.append(babilong_example(rng.choice(load_babi(t, "train", self.root)), self.train_length, rng, text, self.tok))
        return out

    def test_set(self, rng: random.Random) -> list[Example]:
        text = haystack_text("test", self.pg19_root)
        out = []
        for t in self.tasks:
            samples = load_babi(t, "test", self.root)
            idxs = babilong_test_indices(t, self.root)[:self.n_test]
            for L in self.lengths:
                out += [babilong_example(samples[i], L, rng, text, self.tok, f"qa{t},L={L}") for i in idxs]
        return out
