"""What each phase trains on. Every stream is seeded by (loop seed, phase index), so the data cursor of a phase
boundary is the phase index alone and a resumed loop draws exactly the batches an uninterrupted one would.

- mixed: the configured focuses' train splits in equal shares (task SFT and natural text), shuffled.
- graded: one batch at the curriculum's current level, rows alternating over the graded tasks
  (`graded.py`), drawn fresh each step (the level moves).
- given: a fixed list of (input_ids, labels) pairs (the dream and reflection phases' kept samples + replay).
"""
from __future__ import annotations

import random
from typing import Iterator

import torch

from ..training.sft_data import batches, focus_sequences, task_sequences
from .graded import graded_task


def phase_seed(seed: int, phase: int) -> int:
    return seed * 1000 + phase


def mixed_sequences(focuses: list[str], tok, n: int, max_len: int, shots: int, seed: int, data=None):
    per = max(1, n // len(focuses) + 1)
    seqs = []
    for i, focus in enumerate(focuses):
        seqs += focus_sequences(focus, tok, per, max_len, shots, seed + i, data)
    random.Random(seed).shuffle(seqs)
    return seqs


def mixed_batches(focuses, tok, steps: int, batch_size: int, max_len: int, shots: int, seed: int, data=None):
    seqs = mixed_sequences(focuses, tok, steps * batch_size, max_len, shots, seed, data)
    return batches(seqs, batch_size, tok.pad_token_id, seed)


def pad_batch(pairs, pad_id: int) -> dict[str, torch.Tensor]:
    return next(batches(pairs, len(pairs), pad_id, 0))


def graded_batch(tasks: list[str], level: int, tok, batch_size: int, max_len: int, shots: int, seed: int):
    """`batch_size` rows at `level`, the graded tasks in turn (row r: tasks[r % len(tasks)])."""
    pairs = []
    for k, task in enumerate(tasks):
        n = len(range(k, batch_size, len(tasks)))
        if n:
            pairs += task_sequences(tok, graded_task(task, level), n, shots, seed * 31 + k, max_len)
    return pad_batch(pairs, tok.pad_token_id)


def given_batches(pairs, tok, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    return batches(pairs, min(batch_size, len(pairs)), tok.pad_token_id, seed)
