"""The step verifier for dreamed arithmetic (issue 15, phases 7-8): a generated answer is kept only if every
worked step `a op b = c` in it is true and each step starts from the previous step's result, as the arithmetic
task's targets are written (`evals/tasks.py: _worked`: "12 + 5 = 17. 17 * 2 = 34. Answer: 34"). The task checker
judges the final answer; this judges the way there, so a right answer reached by false steps is not trained on.
"""
from __future__ import annotations

import re

# the task's operators only: a step written otherwise does not parse; given `start` and `answer`, the gap it
# leaves breaks the chain, so the text is rejected
STEP = re.compile(r"(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def steps(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in STEP.findall(text)]


def verify_steps(text: str, start: int | None = None, answer: int | None = None, min_steps: int = 1) -> bool:
    """True iff `text` has at least `min_steps` steps, each arithmetically true, each (after the first) starting
    from the previous result, the first from `start` and the last ending at `answer` when given."""
    found = steps(text)
    if len(found) < min_steps:
        return False
    prev = start
    for a, op, b, c in found:
        if prev is not None and a != prev:
            return False
        if _OPS[op](a, b) != c:
            return False
        prev = c
    return answer is None or prev == answer
