"""Quality gates: the maximum regression a stage may cause, per metric, versus the stage's input.

For lower-is-better metrics (perplexity, *_nll) the limit is relative: output <= input * (1 + limit).
For accuracies the limit is absolute: output >= input - limit.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import GateFailed
from .suite import is_lower_better


@dataclass(frozen=True)
class GateResult:
    metric: str
    before: float
    after: float
    limit: float
    passed: bool

    def describe(self) -> str:
        if is_lower_better(self.metric):
            bound = f"at most {self.before * (1 + self.limit):.4g} (+{self.limit:.0%} of the input's {self.before:.4g})"
        else:
            bound = f"at least {self.before - self.limit:.4g} (input {self.before:.4g} minus {self.limit:.4g})"
        return f"{self.metric}: {self.after:.4g}, allowed {bound}"


def check_gates(before: dict[str, float], after: dict[str, float], gates: dict[str, float]) -> list[GateResult]:
    results = []
    for metric, limit in sorted(gates.items()):
        if metric not in before or metric not in after:
            continue  # metric not measured in this run (e.g. task disabled in eval.tasks)
        b, a = before[metric], after[metric]
        ok = a <= b * (1 + limit) if is_lower_better(metric) else a >= b - limit
        results.append(GateResult(metric, b, a, limit, ok))
    return results


def enforce_gates(stage: str, output: str, before, after, gates) -> list[GateResult]:
    results = check_gates(before, after, gates)
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "\n  ".join(r.describe() for r in failed)
        raise GateFailed(
            f"stage {stage!r} failed its quality gate for {output}; no checkpoint was written:\n  {lines}\n"
            f"Loosen `{stage}.gates.<metric>` or change the stage's settings."
        )
    return results
