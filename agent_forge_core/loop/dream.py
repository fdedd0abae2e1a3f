"""Dreaming (phase 7) and self-reflection (phase 8): the model writes its own training data, and only what can
be checked is kept.

Dreaming (rejection-sampling self-training as in ReST-EM / SSR's self-synthesised rehearsal): for train prompts
of each task, sample y ~ π_θ(·|p, T); keep y iff the task's checker accepts it **and**, for arithmetic, the step
verifier accepts every worked step (`verify.py`: a right answer reached by false steps is not kept). Kept
samples are trained on together with real train examples (replay, `replay_ratio` per kept one).

Self-reflection (STaR's rationalisation, Zelikman et al. 2022 §3.2): for the prompts the model failed, prompt
again with the gold answer as a hint, keep the verified rationales, and train on them **without** the hint.

Yield = kept / generated; a yield of 0 is reported as such and the phase trains on nothing (it is a no-op).
"""
from __future__ import annotations

import torch

from ..evals.suite import greedy_complete
from ..evals.task_types import Example, first_line
from ..evals.tasks import get_task, with_shots
from ..training.sft_data import sft_pair
from .verify import steps, verify_steps


def verified(task_name: str, check, completion: str, ex: Example) -> bool:
    """The task's checker, and for arithmetic the worked steps from the example's start to its answer."""
    line = first_line(completion)
    if not check(line, ex):
        return False
    if task_name == "arithmetic":
        gold = steps(ex.target)
        return verify_steps(line, start=gold[0][0] if gold else None, answer=int(ex.answer), min_steps=len(gold))
    return True


def as_target(completion: str, ex: Example) -> str:
    """The completion's answer line written as the task's targets are (their leading space included)."""
    lead = ex.target[: len(ex.target) - len(ex.target.lstrip())]
    return lead + first_line(completion)


def hinted(prompt: str, ex: Example) -> str:
    """The prompt with the gold answer stated before the final answer cue (`A:`)."""
    head, _, _ = prompt.rpartition("\nA:")
    return f"{head} (Hint: the answer is {ex.answer}.)\nA:"


def dream(model, tok, task_names: list[str], n: int, shots: int, seed: int, temperature: float,
          max_new_tokens: int, batch_size: int, max_len: int, generator: torch.Generator, data=None) -> dict:
    """Samples one completion per train prompt; returns the kept (prompt, completion) training pairs, the failed
    items (for reflection) and the counts per task."""
    kept, failed, counts = [], [], {}
    for k, name in enumerate(task_names):
        task = get_task(name, data)
        items = with_shots(task, "train", n, shots, seed + 101 * k)
        outs = greedy_complete(model, tok, [p for p, _ in items], max_new_tokens, batch_size, temperature, generator)
        ok = 0
        for (p, ex), c in zip(items, outs):
            if verified(name, task.check, c, ex):
                kept.append(sft_pair(tok, p, as_target(c, ex), max_len))
                ok += 1
            else:
                failed.append((name, p, ex))
        counts[name] = {"generated": len(items), "kept": ok}
    return {"pairs": kept, "failed": failed, "counts": counts}


def reflect(model, tok, failed: list[tuple[str, str, Example]], temperature: float, max_new_tokens: int,
            batch_size: int, max_len: int, generator: torch.Generator, data=None) -> dict:
    """For each failed item, one sample with the gold answer as a hint; a verified rationale is kept as a
    training pair on the prompt **without** the hint."""
    kept, counts = [], {}
    for name in dict.fromkeys(n for n, _, _ in failed):
        task = get_task(name, data)
        items = [(p, ex) for n, p, ex in failed if n == name]
        outs = greedy_complete(model, tok, [hinted(p, ex) for p, ex in items], max_new_tokens, batch_size,
                               temperature, generator)
        ok = 0
        for (p, ex), c in zip(items, outs):
            if verified(name, task.check, c, ex):
                kept.append(sft_pair(tok, p, as_target(c, ex), max_len))
                ok += 1
        counts[name] = {"generated": len(items), "kept": ok}
    return {"pairs": kept, "counts": counts}


def yield_of(counts: dict) -> float:
    gen = sum(c["generated"] for c in counts.values())
    return sum(c["kept"] for c in counts.values()) / gen if gen else 0.0
