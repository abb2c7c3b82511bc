"""Text tasks with exact answers (copy, reverse, sort, duplicate, running sums, addition); a char tokenizer.

Every example is `prompt -> answer` with a short task word in the prompt ("rev:abc=" -> "cba"); addition needs
no word ("123+456=" -> "579"). Answers are 24-62 characters (addition: 10-31), generated on a canvas of 64.
The long tasks (`long_text_tasks`: counters, strides, expansions; answers of 128-255 characters on a canvas of
256) share the tokenizer, the split rule and `make_example`; "all" still means the short ones the shipped
models were trained on, "long" the long ones.
An example belongs to the held-out test split iff a stable hash of its prompt falls in the test bucket, so the
two splits are disjoint by construction and both are pure functions of (seed, index).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from stretto.data.long_text_tasks import LONG_MAX_ANSWER, LONG_MAX_PROMPT, LONG_TASKS

PAD, MASK, EOT = "<pad>", "<mask>", "<eot>"
SPECIALS = (PAD, MASK, EOT)
CHARS = "0123456789abcdefghijklmnopqrstuvwxyz+=:"


class CharTokenizer:
    """Character-level tokenizer: one id per character, plus pad, mask and end-of-text ids."""

    def __init__(self, chars: str = CHARS):
        self.itos = [*SPECIALS, *chars]
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.pad_id, self.mask_id, self.eot_id = (self.stoi[s] for s in SPECIALS)
        self.chars = chars

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        bad = list(dict.fromkeys(c for c in text if c not in self.chars))  # in order of appearance
        if bad:
            raise ValueError(f"characters not in the vocabulary: {bad}; allowed: {self.chars!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids, stop_at_eot: bool = True) -> str:
        """Ids -> text; masks print as '_', pads are dropped, and text ends at the first end-of-text.

        Ids past the table (a model whose embedding is padded past the vocabulary, as published LMs are) print
        as '?', never an answer character.
        """
        out = []
        for i in ids:
            i = int(i)
            if i == self.eot_id and stop_at_eot:
                break
            if i == self.mask_id:
                out.append("_")
            elif i == self.eot_id:
                out.append("|")
            elif i >= len(self.itos):
                out.append("?")
            elif i != self.pad_id:
                out.append(self.itos[i])
        return "".join(out)


TOKENIZER = CharTokenizer()
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"


def _copy(rng: np.random.Generator) -> tuple[str, str]:
    s = "".join(rng.choice(list(LETTERS), int(rng.integers(24, 61))))
    return f"copy:{s}=", s


def _reverse(rng: np.random.Generator) -> tuple[str, str]:
    s = "".join(rng.choice(list(LETTERS), int(rng.integers(24, 61))))
    return f"rev:{s}=", s[::-1]


def _sort(rng: np.random.Generator) -> tuple[str, str]:
    s = "".join(rng.choice(list(DIGITS), int(rng.integers(24, 61))))
    return f"sort:{s}=", "".join(sorted(s))


def _duplicate(rng: np.random.Generator) -> tuple[str, str]:
    s = "".join(rng.choice(list(LETTERS), int(rng.integers(12, 32))))
    return f"dup:{s}=", "".join(c + c for c in s)


def _running_sum(rng: np.random.Generator) -> tuple[str, str]:
    """Running sums mod 10: answer digit i = (d_0 + ... + d_i) mod 10."""
    d = rng.integers(0, 10, int(rng.integers(24, 61)))
    return "cum:" + "".join(map(str, d)) + "=", "".join(map(str, np.cumsum(d) % 10))


def _add(rng: np.random.Generator) -> tuple[str, str]:
    a, b = ("".join(map(str, [rng.integers(1, 10), *rng.integers(0, 10, int(rng.integers(9, 30)))])) for _ in "ab")
    return f"{a}+{b}=", str(int(a) + int(b))


TASKS = {
    "copy": _copy,
    "reverse": _reverse,
    "sort": _sort,
    "duplicate": _duplicate,
    "running_sum": _running_sum,
    "add": _add,
}
MAX_PROMPT = 66  # longest prompt any task makes ("sort:" + 60 digits + "=")
MAX_ANSWER = 62  # longest answer ("duplicate" of 31 characters); gen_length 64 holds it and an end-of-text
TEST_BUCKETS = 10  # 1 in 10 prompts belongs to the test split
ALL_TASKS = {**TASKS, **LONG_TASKS}
TASK_GROUPS = {"all": tuple(TASKS), "long": tuple(LONG_TASKS)}  # names a task list may use for a whole set


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    answer: str


def is_test(prompt: str) -> bool:
    """The split rule: a stable hash of the prompt, so train and test never share an example."""
    return zlib.crc32(prompt.encode()) % TEST_BUCKETS == 0


def check_tasks(tasks) -> tuple[str, ...]:
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in ALL_TASKS]
    if bad or not tasks:
        raise ValueError(f"unknown text task(s) {bad or tasks}; allowed: {list(ALL_TASKS)}")
    return tasks


def task_names(spec: str) -> tuple[str, ...]:
    """A task list as the command line gives it: "all" (the short tasks), "long", or comma-separated names."""
    if spec in TASK_GROUPS:
        return TASK_GROUPS[spec]
    names = tuple(t.strip() for t in spec.split(",") if t.strip())
    if not names:
        raise ValueError(f"no text task in {spec!r}; allowed: {', '.join(TASK_GROUPS)} or names of {list(ALL_TASKS)}")
    return check_tasks(names)


def max_answer(tasks) -> int:
    """The longest answer any of the tasks makes (gen_length must exceed it, for the end-of-text)."""
    return max(LONG_MAX_ANSWER if t in LONG_TASKS else MAX_ANSWER for t in check_tasks(tasks))


def max_prompt(tasks) -> int:
    """The longest prompt any of the tasks makes."""
    return max(LONG_MAX_PROMPT if t in LONG_TASKS else MAX_PROMPT for t in check_tasks(tasks))


def make_example(seed: int, index: int, split: str = "train", tasks=tuple(TASKS)) -> Example:
    """The `index`-th example of a split; tasks take turns (index mod number of tasks)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    tasks = check_tasks(tasks)
    task = tasks[index % len(tasks)]
    rng = np.random.default_rng((seed, index, 0 if split == "train" else 1))
    while True:  # rejection keeps the split rule exact; about 1.1 draws on average
        prompt, answer = ALL_TASKS[task](rng)
        if is_test(prompt) == (split == "test"):
            return Example(task, prompt, answer)


def held_out(n_per_task: int = 32, seed: int = 1234, tasks=tuple(TASKS)) -> list[Example]:
    """The held-out split: n_per_task examples of each task."""
    tasks = check_tasks(tasks)
    return [make_example(seed, i, "test", tasks) for i in range(n_per_task * len(tasks))]


def make_batch(
    seed: int, step: int, batch_size: int, gen_length: int = 64, tasks=tuple(TASKS)
) -> tuple[torch.Tensor, int]:
    """A training batch: (ids (B, P + gen_length), gen_start P).

    Prompts are left-padded with <pad> to a common length P; the answer is followed by <eot> up to gen_length
    (LLaDA's SFT recipe: the model learns to fill the rest of the canvas with end-of-text).
    """
    tasks = check_tasks(tasks)
    examples = [make_example(seed, step * batch_size + i, "train", tasks) for i in range(batch_size)]
    return encode_examples(examples, gen_length)


def encode_examples(examples: list[Example], gen_length: int) -> tuple[torch.Tensor, int]:
    tok = TOKENIZER
    p = max(len(e.prompt) for e in examples)
    ids = torch.full((len(examples), p + gen_length), tok.eot_id, dtype=torch.long)
    for row, e in enumerate(examples):
        if len(e.answer) >= gen_length:
            raise ValueError(f"answer of {len(e.answer)} characters does not fit gen_length {gen_length}")
        ids[row, : p - len(e.prompt)] = tok.pad_id
        ids[row, p - len(e.prompt) : p] = torch.tensor(tok.encode(e.prompt))
        ids[row, p : p + len(e.answer)] = torch.tensor(tok.encode(e.answer))
    return ids, p
