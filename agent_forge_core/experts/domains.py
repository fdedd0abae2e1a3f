"""The domains experts are trained for and the dispatcher tells apart, each from its labelled generator.

A task domain (`arithmetic`, `recall`, `instruction`, opt-in `driving`) gives few-shot prompts in the eval
suite's format with a checker (REINFORCE's reward) and gold targets (the `nll` objective). `language` is the
pydoc topics text: no checker, so it is trained on next-token NLL, and its dispatch queries are windows of it.
Training and the dispatcher's training data come from train splits only; dispatch accuracy is measured on
test prompts.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..evals.tasks import SPLITS, Example, Task, get_task, with_shots
from ..evals.text import natural_text, ood_text

LANGUAGE = "language"
DOMAIN_NAMES = ("arithmetic", "recall", "instruction", LANGUAGE, "driving")


@dataclass(frozen=True)
class Domain:
    name: str
    task: Task | None  # None: language modelling on the natural text

    @property
    def checkable(self) -> bool:
        return self.task is not None

    def examples(self, split: str, n: int, shots: int, seed: int) -> list[tuple[str, Example]]:
        if self.task is None:
            raise ValueError(f"domain {self.name!r} has no prompts with answers (it is trained on text)")
        return with_shots(self.task, split, n, shots, seed)

    def texts(self, split: str, n: int, chars: int, seed: int) -> list[str]:
        """`n` windows of `chars` characters of the split's natural text, starting at paragraph starts."""
        text = natural_text(split)
        starts = [i + 2 for i in range(len(text) - chars) if text.startswith("\n\n", i)] or [0]
        rng = random.Random(f"{self.name}:{split}:{seed}")
        return [text[s : s + chars] for s in rng.sample(starts, min(n, len(starts)))]

    def queries(self, split: str, n: int, shots: int, seed: int) -> list[str]:
        """What the dispatcher sees: the prompts the eval suite would send (or text windows)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self.task is None:
            return self.texts(split, n, 400, seed)
        return [p for p, _ in self.examples(split, n, shots, seed)]


def get_domain(name: str, data: dict[str, str] | None = None) -> Domain:
    if name == LANGUAGE:
        return Domain(name, None)
    if name not in DOMAIN_NAMES:
        raise ValueError(f"unknown expert domain {name!r}; allowed: {list(DOMAIN_NAMES)}")
    return Domain(name, get_task(name, data))


def other_texts(n: int, chars: int = 400, seed: int = 0) -> list[str]:
    """Text of none of the domains, for the share a dispatcher leaves on the base weights: windows of the held-out
    chat text's validation half (no dispatcher trains on it)."""
    text = ood_text("validation")
    rng = random.Random(f"other:{seed}")
    return [text[s : s + chars] for s in rng.sample(range(0, len(text) - chars), n)]
