"""The types every task is made of: an example, a phrasing family, a task with seeded family-disjoint splits.

The generators live in `tasks.py` (built-in) and their own modules (opt-in tasks such as `driving.py`); both
import these types, and `tasks.py` registers them all.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str  # the full completion a trained model should produce (worked steps included)
    answer: str  # what `check` compares against
    family: str = ""


def split_of(text: str) -> str:
    """80/10/10 by a hash: for user JSONL rows without a split, and for the perplexity texts."""
    b = hashlib.sha256(text.encode()).digest()[0] % 10
    return "train" if b < 8 else ("validation" if b == 8 else "test")


def first_line(completion: str) -> str:
    return completion.split("\n", 1)[0].strip()


@dataclass(frozen=True)
class Family:
    name: str
    split: str
    make: Callable[[random.Random], Example]


@dataclass(frozen=True)
class Task:
    name: str
    families: tuple[Family, ...]
    check: Callable[[str, Example], bool]
    jsonl: str | None = None  # user data replaces the generators

    def families_of(self, split: str) -> list[Family]:
        return [f for f in self.families if f.split == split]

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self.jsonl:
            rows = [ex for s, ex in _read_jsonl(self.jsonl, self.name) if s == split]
            if not rows:
                raise ValueError(f"{self.jsonl}: no rows for split {split!r}; add a 'split' field or more rows")
            return rows[:n]
        return list(_take(self._stream(split, seed), n))

    def _stream(self, split: str, seed: int) -> Iterator[Example]:
        rng = random.Random(f"{self.name}:{split}:{seed}")
        families = self.families_of(split)
        while True:
            fam = rng.choice(families)
            ex = fam.make(rng)
            yield Example(ex.prompt, ex.target, ex.answer, fam.name)


def _take(stream: Iterator[Example], n: int) -> Iterator[Example]:
    seen: set[str] = set()
    tries = 0
    for ex in stream:
        tries += 1
        if tries > 200 * n + 10_000:
            raise RuntimeError(f"could not generate {n} distinct examples")
        if ex.prompt in seen:
            continue
        seen.add(ex.prompt)
        yield ex
        if len(seen) == n:
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
        out.append((split, Example(prompt, target, answer, "jsonl")))
    return out
