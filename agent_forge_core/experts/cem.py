"""The cross-entropy method for Transformer²'s few-shot adaptation (§3.2; reference `cfgs/optimization/cem.yaml`).

Each generation samples a population of α ~ N(μ, σ²) clamped to [0, 1], scores them, and refits μ and σ to the
elites (the top `elite_ratio`). Fitness is compared as (accuracy, log-likelihood): the log-likelihood of the
correct outputs breaks ties of accuracy (`use_loglikelihood_for_ties`), which on a handful of shots is most
comparisons. The best α seen is kept with its score (the reference re-evaluates the elite every generation;
scores here are deterministic, so the cached score is the same number).
"""
from __future__ import annotations

from typing import Callable

import torch

Score = tuple[float, float]  # (accuracy, mean log-likelihood of the correct outputs)


def cem(fitness: Callable[[list[float]], Score], dim: int, population: int, elite_ratio: float, generations: int,
        init_std: float = 0.5, seed: int = 0, log: Callable[[dict], None] | None = None) -> tuple[list[float], Score, list[dict]]:
    """(best α, its score, history per generation)."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.full((dim,), 1.0 / dim)
    std = torch.full((dim,), init_std)
    n_elite = max(1, round(population * elite_ratio))
    best: tuple[list[float], Score] | None = None
    history = []
    for g in range(generations):
        samples = (mu + std * torch.randn(population, dim, generator=gen)).clamp(0, 1)
        scores = [fitness(s.tolist()) for s in samples]
        order = sorted(range(population), key=lambda i: scores[i], reverse=True)
        elites = samples[order[:n_elite]]
        mu = elites.mean(0)
        std = elites.std(0, unbiased=False) if n_elite > 1 else std * 0.5
        top = order[0]
        if best is None or scores[top] > best[1]:
            best = (samples[top].tolist(), scores[top])
        row = {"generation": g, "best_accuracy": best[1][0], "best_loglik": best[1][1],
               "mean_accuracy": sum(s[0] for s in scores) / population, "mu": mu.tolist()}
        history.append(row)
        if log:
            log(row)
    assert best is not None
    return best[0], best[1], history
