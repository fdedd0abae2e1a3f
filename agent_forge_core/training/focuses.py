"""The training focuses: what each one trains on and the metric that shows its effect.

A task focus trains on its task's train split (SFT on the completion); `language` trains on held-in
natural text. Cognate makes one variant per focus; BitNet QAT mixes focuses as its training data.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Focus:
    task: str | None  # the eval task it trains on; None: language modelling on natural text
    metric: str  # the metric that shows its effect


FOCUSES = {
    "reasoning": Focus("arithmetic", "arithmetic"),  # arithmetic word problems with worked steps
    "memory": Focus("recall", "recall"),  # in-context key-value recall
    "language": Focus(None, "perplexity"),  # held-in natural text
    "instruction": Focus("instruction", "instruction"),  # short instructions with checkable formats
}


def check_focuses(names: list[str]) -> list[str]:
    """Validator body: known, distinct focus names."""
    bad = [n for n in names if n not in FOCUSES]
    if bad:
        raise ValueError(f"unknown focus(es) {bad}; allowed: {list(FOCUSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"focuses must be distinct, got {names}")
    return names


def mixture_counts(total: int, names: list[str], shares: dict[str, float]) -> dict[str, int]:
    """Sequences per focus out of `total`: in proportion to `shares` (a focus not named weighs 1; no shares: an
    equal split), each at least 1, largest remainders rounded up so the counts sum to `total`."""
    w = [shares.get(n, 1.0) for n in names]
    exact = [total * x / sum(w) for x in w]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(names)), key=lambda i: counts[i] - exact[i])[:total - sum(counts)]:
        counts[i] += 1
    return {n: max(1, c) for n, c in zip(names, counts)}
