"""Training batches for a focus: task SFT (loss on the target only) or plain language modelling."""
from __future__ import annotations

import random
from typing import Iterator

import torch

from ..evals.task_types import Task
from ..evals.tasks import get_task, with_shots
from ..evals.text import natural_text
from .focuses import FOCUSES


def task_sequences(tokenizer, task_name: str | Task, n: int, shots: int, seed: int, max_len: int, data=None):
    """(input_ids, labels) with labels = -100 on the prompt: the model learns the completion only.
    Prompts use the same few-shot format as the eval suite, drawn from the train split. `task_name` may be a
    Task itself (the loop's graded generators)."""
    task = get_task(task_name, data) if isinstance(task_name, str) else task_name
    return [sft_pair(tokenizer, prompt, ex.target, max_len) for prompt, ex in with_shots(task, "train", n, shots, seed)]


def sft_pair(tokenizer, prompt: str, completion: str, max_len: int) -> tuple[list[int], list[int]]:
    """One (input_ids, labels) pair: the completion (and its newline) learned, the prompt masked; cut from the
    left when too long, so the completion survives."""
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    full = tokenizer(prompt + completion + "\n", add_special_tokens=False).input_ids
    if len(full) > max_len:  # keep the end: the target must survive truncation
        cut = len(full) - max_len
        full, p = full[cut:], p[cut:]
    return full, [-100] * len(p) + full[len(p):]


def text_sequences(tokenizer, max_len: int, n: int, seed: int):
    """Random windows of held-in natural text (the train split of the topics)."""
    ids = tokenizer(natural_text("train"), add_special_tokens=False).input_ids
    rng = random.Random(seed)
    starts = [rng.randrange(0, max(1, len(ids) - max_len)) for _ in range(n)]
    return [(ids[s : s + max_len], ids[s : s + max_len]) for s in starts]


def with_replay(seqs, tokenizer, share: float, max_len: int, seed: int):
    """Rehearsal against forgetting: the last `share` of a task focus's sequences replaced by windows of
    held-in natural text, so the fine-tune keeps practising language modelling (shuffled in `batches`)."""
    k = round(len(seqs) * share)
    if k == 0:
        return seqs
    return seqs[: len(seqs) - k] + text_sequences(tokenizer, max_len, k, seed)


def batches(seqs, batch_size: int, pad_id: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches, right-padded."""
    rng = random.Random(seed)
    order = list(range(len(seqs)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [seqs[j] for j in order[i : i + batch_size]]
            width = max(len(x) for x, _ in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            lab = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (x, y) in enumerate(chunk):
                ids[r, : len(x)] = torch.tensor(x)
                lab[r, : len(y)] = torch.tensor(y)
                mask[r, : len(x)] = 1
            yield {"input_ids": ids, "labels": lab, "attention_mask": mask}


def focus_sequences(focus: str, tokenizer, n: int, max_len: int, shots: int, seed: int, data=None):
    """Training sequences of a focus: task SFT for task focuses, language modelling for `language`."""
    task = FOCUSES[focus].task
    if task is None:
        return text_sequences(tokenizer, max_len, n, seed)
    return task_sequences(tokenizer, task, n, shots, seed + 17, max_len, data)
