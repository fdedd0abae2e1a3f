"""Verifiable task generators with fixed seeds and disjoint train/validation/test splits.

Every example is produced by a seeded stream and assigned to a split by a hash of its prompt
(80/10/10), so the splits can never share a prompt, whatever sizes are asked for. Each task knows how
to check a completion, so accuracy needs no judge model.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

SPLITS = ("train", "validation", "test")
TASK_NAMES = ("arithmetic", "recall", "instruction")


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str  # the full completion a trained model should produce (worked steps included)
    answer: str  # what `check` compares against


def split_of(text: str) -> str:
    b = hashlib.sha256(text.encode()).digest()[0] % 10
    return "train" if b < 8 else ("validation" if b == 8 else "test")


_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kira", "Leo", "Mia", "Nour"]
_ITEMS = ["apples", "marbles", "stamps", "coins", "books", "shells", "cards", "pencils", "stickers", "beads"]
_WORDS = [
    "cat", "sun", "box", "pen", "map", "cup", "key", "owl", "fig", "jar", "hat", "ink", "oak", "rug", "van",
    "web", "yak", "zip", "bee", "cow", "dog", "egg", "fan", "gem", "hen", "ice", "jam", "kit", "lid", "mud",
]


def _arithmetic(rng: random.Random) -> Example:
    """Two or three step word problem; target shows each step, then `Answer: N`."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(2, 20)
    text = [f"{name} has {value} {item}."]
    steps = []
    for i in range(rng.randint(2, 3)):
        op = rng.choice(["add", "sub", "mul"] if value <= 30 else ["add", "sub"])
        if op == "add":
            k = rng.randint(2, 15)
            text.append(f"Then {k} more are added.")
            steps.append(f"{value} + {k} = {value + k}.")
            value += k
        elif op == "sub":
            k = rng.randint(1, max(1, value - 1))
            text.append(f"Then {k} are given away.")
            steps.append(f"{value} - {k} = {value - k}.")
            value -= k
        else:
            k = rng.choice([2, 3])
            text.append(f"Then the number of {item} is multiplied by {k}.")
            steps.append(f"{value} * {k} = {value * k}.")
            value *= k
    prompt = " ".join(text) + f" How many {item} are there now?"
    return Example(prompt, " " + " ".join(steps) + f" Answer: {value}", str(value))


def _recall(rng: random.Random) -> Example:
    """In-context key-value recall: a list of word=number records, then a query for one key."""
    keys = rng.sample(_WORDS, rng.randint(4, 6))
    vals = [rng.randint(10, 99) for _ in keys]
    q = rng.randrange(len(keys))
    records = "; ".join(f"{k}={v}" for k, v in zip(keys, vals))
    return Example(f"Records: {records}. What is the value of {keys[q]}?", f" {vals[q]}", str(vals[q]))


def _instruction(rng: random.Random) -> Example:
    """Short instructions whose output format is checkable exactly."""
    kind = rng.randrange(4)
    if kind == 0:
        ws = rng.sample(_WORDS, rng.randint(1, 2))
        out = "[" + " ".join(w.upper() for w in ws) + "]"
        prompt = f"Write {' and '.join(ws)} in uppercase inside square brackets."
    elif kind == 1:
        a = rng.randint(1, 60)
        b = a + rng.randint(2, 5)
        sep, sep_name = rng.choice([(",", "commas"), (";", "semicolons"), ("-", "dashes")])
        out = sep.join(str(i) for i in range(a, b + 1))
        prompt = f"List the numbers from {a} to {b}, separated by {sep_name}."
    elif kind == 2:
        w, k = rng.choice(_WORDS), rng.randint(2, 4)
        sep, sep_name = rng.choice([(" ", "spaces"), (",", "commas")])
        out = sep.join([w] * k)
        prompt = f"Repeat the word {w} {k} times, separated by {sep_name}."
    else:
        ws = rng.sample(_WORDS, 3)
        out = ",".join(reversed(ws))
        prompt = f"Write {', '.join(ws)} in reverse order, separated by commas."
    return Example(prompt, " " + out, out)


def first_line(completion: str) -> str:
    return completion.split("\n", 1)[0].strip()


def _check_arithmetic(completion: str, ex: Example) -> bool:
    m = re.search(r"Answer:\s*(-?\d+)", first_line(completion))
    return bool(m) and m.group(1) == ex.answer


def _check_first_int(completion: str, ex: Example) -> bool:
    m = re.search(r"-?\d+", first_line(completion))
    return bool(m) and m.group(0) == ex.answer


def _check_exact(completion: str, ex: Example) -> bool:
    return first_line(completion) == ex.answer


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[[random.Random], Example] | None
    check: Callable[[str, Example], bool]
    jsonl: str | None = None  # user data replaces the generator

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self.jsonl:
            rows = [ex for s, ex in _read_jsonl(self.jsonl, self.name) if s == split]
            if not rows:
                raise ValueError(f"{self.jsonl}: no rows for split {split!r}; add a 'split' field or more rows")
            return rows[:n]
        return list(_take(self._stream(seed), split, n))

    def _stream(self, seed: int) -> Iterator[Example]:
        rng = random.Random(f"{self.name}:{seed}")
        while True:
            yield self.make(rng)


def _take(stream: Iterator[Example], split: str, n: int) -> Iterator[Example]:
    seen: set[str] = set()
    count, tries = 0, 0
    for ex in stream:
        tries += 1
        if tries > 200 * n + 10_000:
            raise RuntimeError(f"could not generate {n} distinct {split} examples")
        if ex.prompt in seen or split_of(ex.prompt) != split:
            continue
        seen.add(ex.prompt)
        yield ex
        count += 1
        if count == n:
            return


def _read_jsonl(path: str, task: str) -> list[tuple[str, Example]]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"eval.data.{task}: file {path!r} does not exist")
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, answer = str(row["prompt"]), str(row["answer"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}:{i}: each line must be a JSON object with 'prompt' and 'answer' "
                f"(optional 'target', 'split'): {e}"
            ) from None
        target = str(row.get("target", " " + answer))
        split = row.get("split") or split_of(prompt)
        if split not in SPLITS:
            raise ValueError(f"{path}:{i}: split must be one of {SPLITS}, got {split!r}")
        out.append((split, Example(prompt, target, answer)))
    return out


BUILTIN = {
    "arithmetic": Task("arithmetic", _arithmetic, _check_arithmetic),
    "recall": Task("recall", _recall, _check_first_int),
    "instruction": Task("instruction", _instruction, _check_exact),
}


def get_task(name: str, data: dict[str, str] | None = None) -> Task:
    """The built-in task, or the user's JSONL rows for it (checked by exact match of the first line)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown task {name!r}; allowed: {list(BUILTIN)}")
    if data and name in data:
        base = BUILTIN[name]
        return Task(name, None, base.check if name == "arithmetic" else _check_exact, jsonl=data[name])
    return BUILTIN[name]


def few_shot_prompt(ex: Example, shots: list[Example]) -> str:
    """`Q: ...\\nA: ...` blocks; the model completes the last `A:` on one line."""
    blocks = [f"Q: {s.prompt}\nA:{s.target}\n\n" for s in shots]
    return "".join(blocks) + f"Q: {ex.prompt}\nA:"


def with_shots(task: Task, split: str, n: int, shots: int, seed: int) -> list[tuple[str, Example]]:
    """(prompt, example) pairs; in-context examples always come from the train split."""
    items = task.examples(split, n, seed)
    pool = task.examples("train", max(64, shots * 8), seed + 1) if shots else []
    rng = random.Random(f"shots:{task.name}:{split}:{seed}")
    return [(few_shot_prompt(ex, rng.sample(pool, shots) if shots else []), ex) for ex in items]
