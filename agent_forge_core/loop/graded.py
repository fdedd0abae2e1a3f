"""Difficulty-graded generators for the loop's curriculum (issue 15, phases 3-6): the arithmetic and recall
tasks' own wordings and splits, at levels 1..5. New tasks, named `<task>_d<level>`, so the evaluation's
generators (and every cached key that depends on their examples) stay as they are.

- arithmetic_d<L>: L steps, start in 2..10·L, additions up to 5·L + 5, subtraction keeping the count positive,
  multiplication by 2 or 3 while the count is at most 15·L (level 2 has the eval's bounds with exactly 2 steps
  where the eval has 2 or 3); the target lists every
  step (`a op k = b.`), so the step verifier applies.
- recall_d<L>: 2·L + 1 to 2·L + 3 records (the eval's 4-6 lie between levels 1 and 2), then one query.
"""
from __future__ import annotations

import random
from functools import partial

from ..evals.task_types import Family, Task
from ..evals.tasks import (ARITHMETIC_RENDERERS, RECALL_RENDERERS, Program, arithmetic_family, program, check_arithmetic,
                           check_first_int, recall_family)

LEVELS = (1, 2, 3, 4, 5)
GRADED = ("arithmetic", "recall")


def graded_program(rng: random.Random, level: int) -> Program:
    return program(rng, start_max=10 * level, steps=(level, level), add_max=5 * level + 5, mul_max=15 * level)


def graded_task(task: str, level: int) -> Task:
    if task not in GRADED or level not in LEVELS:
        raise ValueError(f"no graded generator for {task!r} at level {level}: tasks {list(GRADED)}, levels {list(LEVELS)}")
    if task == "arithmetic":
        make, table, check = partial(arithmetic_family, program=partial(graded_program, level=level)), \
            ARITHMETIC_RENDERERS, check_arithmetic
    else:
        make, table, check = partial(recall_family, records=(2 * level + 1, 2 * level + 3)), RECALL_RENDERERS, \
            check_first_int
    return Task(f"{task}_d{level}", tuple(Family(name, split, make(render)) for name, split, render in table), check)
