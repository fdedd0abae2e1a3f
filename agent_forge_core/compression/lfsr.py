"""The 16-bit Fibonacci LFSR behind SeedLM (Shafipour et al. 2024, §3.1).

Feedback polynomial x^16 + x^14 + x^13 + x^11 + 1 (taps 16, 14, 13, 11): primitive, so every nonzero
seed walks the same cycle of all 2^16 − 1 nonzero states. Step: bit = s ⊕ s>>2 ⊕ s>>3 ⊕ s>>5 (lowest
bit first), s ← (s >> 1) | (bit << 15).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

K = 16
PERIOD = (1 << K) - 1


def step(state: int) -> int:
    bit = (state ^ (state >> 2) ^ (state >> 3) ^ (state >> 5)) & 1
    return (state >> 1) | (bit << 15)


def sequence(seed: int, n: int) -> list[int]:
    """The n states after `seed` (the seed itself excluded)."""
    if not 0 < seed <= PERIOD:
        raise ValueError(f"LFSR seed must be in 1..{PERIOD}, got {seed}")
    out, s = [], seed
    for _ in range(n):
        s = step(s)
        out.append(s)
    return out


@lru_cache(maxsize=1)
def cycle() -> tuple[np.ndarray, np.ndarray]:
    """(states in cycle order starting from 1, position of each state in that order)."""
    states = np.empty(PERIOD, dtype=np.int64)
    s = 1
    for i in range(PERIOD):
        states[i] = s
        s = step(s)
    pos = np.empty(PERIOD + 1, dtype=np.int64)
    pos[states] = np.arange(PERIOD)
    return states, pos


def windows(seeds: np.ndarray, n: int) -> np.ndarray:
    """For every seed, its next n states: one cycle, indexed, instead of 65535 separate walks."""
    states, pos = cycle()
    idx = (pos[seeds][:, None] + 1 + np.arange(n)[None, :]) % PERIOD
    return states[idx]
