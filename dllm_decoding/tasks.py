"""Checkable tasks for the reference model, in the spirit of ParallelBench (arXiv 2510.04767).

Each task generates (prompt, answer) strings, seeded, in fixed train / validation / test splits
that never overlap (a problem's split is a hash of its canonical form), and checks a predicted
answer exactly. Some tasks parallelise easily (every answer token follows from the prompt
alone); others have answer tokens that depend on each other (several valid answers, and
choosing one position constrains the others), which is where decoding strategies differ.

Answers shorter than ``gen_length`` are followed by EOS up to ``gen_length`` (LLaDA's EOS fill).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .core.errors import ConfigError, did_you_mean
from .text import left_pad

SPLITS = ("train", "validation", "test")
#: the most examples one call draws (a larger n would only exhaust memory or the task)
MAX_EXAMPLES = 1_000_000
DIGITS = "0123456789"
NAMES = ("ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal", "ivy", "jon", "kim", "lea",
         "max", "ned", "oli", "pam", "ray", "sue", "tom", "val")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


@dataclass(frozen=True)
class Task:
    """A task: ``make(rng) -> Example``; ``check(prediction, example) -> bool``."""

    name: str
    gen_length: int
    description: str
    make: Callable[[random.Random], Example]
    check_fn: Callable[[str, Example], bool]
    canonical: Callable[[Example], str]
    parallel_sensitive: bool

    def split_of(self, example: Example) -> str:
        digest = hashlib.sha256(f"{self.name}|{self.canonical(example)}".encode()).digest()
        bucket = digest[0] % 10
        return "test" if bucket == 0 else "validation" if bucket == 1 else "train"

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """``n`` distinct examples of ``split``, the same for the same seed."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_EXAMPLES:
            raise ConfigError(f"task {self.name!r}: n={n!r} examples; give a number from 1 to {MAX_EXAMPLES}")
        rng = random.Random(f"{self.name}/{split}/{seed}")
        out, seen = [], set()
        misses = 0  # draws since the last new example: the split is exhausted long before 200 * n
        for _ in range(200 * n + 1000):
            ex = self.make(rng)
            key = self.canonical(ex)
            if key in seen or self.split_of(ex) != split:
                misses += 1
                if misses > 20_000:
                    break
                continue
            misses = 0
            seen.add(key)
            out.append(ex)
            if len(out) == n:
                return out
        raise ConfigError(f"task {self.name!r}: could not draw {n} distinct {split} examples "
                          f"(got {len(out)}); ask for fewer")

    def sample(self, rng: random.Random, split: str = "train") -> Example:
        """One example of ``split`` (repeats allowed): the training stream."""
        while True:
            ex = self.make(rng)
            if self.split_of(ex) == split:
                return ex

    def check(self, prediction: str, example: Example) -> bool:
        return self.check_fn(prediction, example)


def _exact(prediction: str, example: Example) -> bool:
    return prediction == example.answer


def _prompt_key(example: Example) -> str:
    return example.prompt


def _digits(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(DIGITS) for _ in range(rng.randint(lo, hi)))


def _copy(rng):
    s = _digits(rng, 4, 12)
    return Example(f"C{s}=", s)


def _reverse(rng):
    s = _digits(rng, 4, 12)
    return Example(f"R{s}=", s[::-1])


def _sort(rng):
    s = _digits(rng, 4, 12)
    return Example(f"S{s}=", "".join(sorted(s)))


def _insert(rng):
    names = rng.sample(NAMES, rng.randint(3, 8))
    new = rng.choice([n for n in NAMES if n not in names])
    pos = rng.randint(0, len(names))
    out = names[:pos] + [new] + names[pos:]
    return Example(f"I{','.join(names)}:{pos}{new}=", ",".join(out))


def _addition(rng):
    # operands and sum least-significant digit first: each sum digit needs the carry from the
    # digits before it
    a, b = rng.randint(0, 9999), rng.randint(0, 9999)
    return Example(f"A{str(a)[::-1]}+{str(b)[::-1]}=", str(a + b)[::-1])


HEX = "0123456789abcdef"


def _complement(rng):
    # the hex digits missing from a set, in ANY order: several valid answers, so positions
    # decoded in parallel from their marginals can pick the same digit twice
    shown = rng.sample(HEX, rng.randint(10, 13))
    missing = [d for d in HEX if d not in shown]
    rng.shuffle(missing)
    return Example(f"M{''.join(shown)}=", "".join(missing))


def _complement_key(example: Example) -> str:
    return "".join(sorted(example.prompt[1:-1]))


def _complement_check(prediction: str, example: Example) -> bool:
    return sorted(prediction) == sorted(example.answer)


_LATIN = [sq for sq in itertools.product(itertools.permutations("1234"), repeat=4)
          if all(len({row[c] for row in sq}) == 4 for c in range(4))]


def _latin(rng):
    # a 4x4 Latin square with 6-9 cells blanked: often several valid completions, and every
    # filled cell constrains its row and column
    square = "".join("".join(row) for row in rng.choice(_LATIN))
    blanks = set(rng.sample(range(16), rng.randint(6, 9)))
    puzzle = "".join("_" if i in blanks else c for i, c in enumerate(square))
    return Example(f"L{puzzle}=", square)


def _latin_check(prediction: str, example: Example) -> bool:
    puzzle = example.prompt[1:-1]
    if len(prediction) != 16 or any(p != "_" and p != c for p, c in zip(puzzle, prediction)):
        return False
    rows = [prediction[4 * r: 4 * r + 4] for r in range(4)]
    cols = ["".join(row[c] for row in rows) for c in range(4)]
    return all(sorted(line) == list("1234") for line in rows + cols)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("copy", 12, "copy 4-12 digits", _copy, _exact, _prompt_key, False),
    Task("reverse", 12, "reverse 4-12 digits", _reverse, _exact, _prompt_key, False),
    Task("sort", 12, "sort 4-12 digits", _sort, _exact, _prompt_key, False),
    Task("insert", 36, "insert a name into a list of 3-8 names at a position", _insert, _exact, _prompt_key, False),
    Task("addition", 6, "add two numbers < 10000, digits least-significant first", _addition, _exact, _prompt_key, True),
    Task("complement", 6, "the hex digits missing from a set of 10-13, any order", _complement, _complement_check, _complement_key, True),
    Task("latin_square", 16, "complete a 4x4 Latin square with 6-9 blanks (any valid completion)", _latin, _latin_check, _prompt_key, True),
)}

#: every character any task writes, in a fixed order (the tokenizer's vocabulary)
ALPHABET = sorted(set(DIGITS) | set("".join(NAMES)) | set("_:,+=") | set("CRSIAML"))
_ALPHABET_SET = frozenset(ALPHABET)


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is a ConfigError naming the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; {did_you_mean(name, TASKS)}")
    return TASKS[name]


def encode_batch(tokenizer, examples: list[Example], task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as a LEFT-padded LongTensor ``(B, P)`` and its attention mask."""
    if not examples:
        raise ValueError("encode_batch needs at least one example")
    for ex in examples:
        unknown = set(ex.prompt) - _ALPHABET_SET
        if unknown:
            raise ValueError(f"prompt {ex.prompt!r} has characters outside the task alphabet: "
                             f"{''.join(sorted(unknown))!r}")
    return left_pad([tokenizer.encode(ex.prompt, add_special_tokens=False) for ex in examples],
                    tokenizer.pad_token_id)


def encode_answers(tokenizer, examples: list[Example], task: Task) -> torch.Tensor:
    """Answers as ``(B, gen_length)`` ids, EOS-filled after the answer."""
    out = torch.full((len(examples), task.gen_length), tokenizer.eos_token_id, dtype=torch.long)
    for row, ex in enumerate(examples):
        seq = tokenizer.encode(ex.answer, add_special_tokens=False)
        if len(seq) > task.gen_length:
            raise ValueError(f"task {task.name}: answer of {len(seq)} tokens > gen_length {task.gen_length}")
        out[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def decode_answer(tokenizer, ids: torch.Tensor) -> str:
    """The answer text from the answer-region ids (e.g. ``out.sequences[row, P:]`` or
    ``out.answers[row]``): everything before the first EOS, [PAD]/[MASK] dropped."""
    ids = [int(i) for i in ids]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "")
