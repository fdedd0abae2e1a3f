"""Cloze questions over the retrieval corpus: a sentence of a passage with its rarest word blanked.

Exact answers, one passage that holds them, and topics split by hash (`split_of("topic:" + source)`), so
questions for training come from other topics than those measured.
"""
from __future__ import annotations

import random
import re
from collections import Counter

from ...evals.tasks import split_of

PROMPT = "Fill the blank with one word from the Python documentation: {}"


def cloze_questions(passages, n: int, seed: int = 0, split: str = "test") -> list[tuple[int, str, str]]:
    """(passage index, sentence with `____`, the blanked word) from topics of `split`; the word occurs at
    most 3 times in the corpus (so the passage identifies it)."""
    freq = Counter(w.lower() for p in passages for w in re.findall(r"[A-Za-z]{5,}", p.text))
    rng = random.Random(seed)
    held = [i for i, p in enumerate(passages) if split_of("topic:" + p.source) == split]
    rng.shuffle(held)
    out = []
    for i in held:
        words = [w for w in re.findall(r"[A-Za-z]{5,}", passages[i].text) if freq[w.lower()] <= 3]
        if not words:
            continue
        word = min(words, key=lambda w: (freq[w.lower()], w))
        sentence = next((s for s in re.split(r"(?<=[.!?])\s+", passages[i].text) if word in s), None)
        if sentence is None or len(sentence.split()) < 6:
            continue
        out.append((i, sentence.replace(word, "____", 1)[:300], word))
        if len(out) == n:
            break
    return out


def first_word(answer: str) -> str:
    """What an answer to a cloze question says: its first word, punctuation stripped, lower case."""
    return (answer.strip().split() or [""])[0].strip(".,;:\"'`()").lower()
