"""The combined score a search maximizes, and the one the benchmark reports.

    score = Σ_m w_m · term_m,   term = accuracy for task metrics, −ln(perplexity) for `perplexity` and
                                `perplexity_ood`, −NLL for `<task>_nll`

One number, higher is better; log-perplexity keeps a perplexity change comparable across models.
"""
from __future__ import annotations

import math

WORST = -1e9  # the score of a candidate that crashed or produced NaNs


def term(metric: str, value: float) -> float:
    if metric.startswith("perplexity"):
        return -math.log(value)
    if metric.endswith("_nll"):
        return -value
    return value


def combined_score(metrics: dict[str, float], weights: dict[str, float]) -> float:
    missing = [m for m in weights if m not in metrics]
    if missing:
        raise KeyError(f"metrics {missing} are not in the evaluation; add their tasks to eval.tasks")
    values = [w * term(m, float(metrics[m])) for m, w in weights.items()]
    score = sum(values)
    return score if math.isfinite(score) else WORST


def score_se(metrics: dict[str, float], weights: dict[str, float]) -> float:
    """Standard error of the combined score from its accuracy terms' standard errors (`<task>_se`):
    sqrt(Σ (w·se)²). The perplexity and NLL terms are averages over thousands of tokens and count as exact."""
    return math.sqrt(sum((w * metrics[f"{m}_se"]) ** 2 for m, w in weights.items() if f"{m}_se" in metrics))


def crashed_result(exc: BaseException) -> dict:
    """The result of a candidate whose evaluation failed or was lost (its merge or eval raised, the worker
    died, retries spent): worst for this search, never stored, evaluated again on resume."""
    return {"status": "crashed", "fitness": WORST, "metrics": {}, "error": f"{type(exc).__name__}: {exc}"}
