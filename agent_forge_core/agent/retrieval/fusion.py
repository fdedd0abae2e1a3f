"""Reciprocal rank fusion (Cormack et al. 2009): score(d) = Σ_r 1 / (k + rank_r(d)), ranks from 1, k = 60."""
from __future__ import annotations


def rrf(rankings: list[list[int]], k: int = 60) -> list[int]:
    """Document ids ordered by fused score (ties: the lower id first)."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, 1):
            score[doc] = score.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(score, key=lambda d: (-score[d], d))
