"""Quality gates: the maximum regression a stage may cause, per metric, versus the stage's input.

For lower-is-better metrics (perplexity, perplexity_ood, *_nll) the limit is relative: output <= input *
(1 + limit). For accuracies the limit is absolute: output >= input - limit. A gate compares the two
point estimates; for accuracies it also says whether the difference is beyond the measurement's noise
(`suite.difference_noise` of the two standard errors), so "failed by 0.03 with noise ±0.14" reads as what
it is. With `noise_aware` (`eval.noise_aware_gates`, on by default) an accuracy gate fails only when its shortfall
below the allowed minimum is itself beyond that noise: a one-sided test of "the drop is at most the limit" at
about 2 standard errors, instead of a coin flip at small n (32 examples: a 0.1 gate on a 0.84 accuracy failed on
a 0.16 drop whose noise was ±0.21).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import GateFailed
from .suite import difference_noise, is_lower_better


@dataclass(frozen=True)
class GateResult:
    metric: str
    before: float
    after: float
    limit: float
    passed: bool
    noise: float | None = None  # accuracies: 2 standard errors of the difference
    shortfall: float = 0.0  # how far the point estimate is past the limit (0: within it)

    @property
    def significant(self) -> bool | None:
        """Whether after - before is beyond the noise (None where no standard error is known)."""
        return None if self.noise is None else abs(self.after - self.before) > self.noise

    def as_dict(self) -> dict:
        return {"metric": self.metric, "before": self.before, "after": self.after, "limit": self.limit,
                "passed": self.passed, "noise": self.noise, "significant": self.significant,
                "shortfall": self.shortfall}

    def describe(self) -> str:
        if is_lower_better(self.metric):
            bound = f"at most {self.before * (1 + self.limit):.4g} (+{self.limit:.0%} of the input's {self.before:.4g})"
        else:
            bound = f"at least {self.before - self.limit:.4g} (input {self.before:.4g} minus {self.limit:.4g})"
        if self.shortfall > 0:
            bound += f", {'over' if is_lower_better(self.metric) else 'short'} by {self.shortfall:.4g}"
            if self.passed:
                bound += f" (within the noise ±{self.noise:.3f}: passes)"
        noise = "" if self.noise is None else (
            f"; the change {self.after - self.before:+.3f} is {'beyond' if self.significant else 'within'} the "
            f"noise of ±{self.noise:.3f}")
        return f"{self.metric}: {self.after:.4g}, allowed {bound}{noise}"


def check_gates(before: dict[str, float], after: dict[str, float], gates: dict[str, float],
                noise_aware: bool = False) -> list[GateResult]:
    results = []
    for metric, limit in sorted(gates.items()):
        if metric not in before or metric not in after:
            continue  # metric not measured in this run (e.g. task disabled in eval.tasks)
        b, a = before[metric], after[metric]
        short = max(0.0, a - b * (1 + limit) if is_lower_better(metric) else (b - limit) - a)
        se = f"{metric}_se"
        noise = difference_noise(before[se], after[se]) if se in before and se in after else None
        ok = short == 0 or (noise_aware and noise is not None and short <= noise)
        results.append(GateResult(metric, b, a, limit, ok, noise, short))
    return results


def enforce_gates(stage: str, output: str, before, after, gates, advice: str | None = None,
                  noise_aware: bool = False) -> list[GateResult]:
    """check_gates, raising GateFailed (which metrics, by how much, and `advice` or the generic fix)."""
    results = check_gates(before, after, gates, noise_aware)
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "\n  ".join(r.describe() for r in failed)
        raise GateFailed(
            f"stage {stage!r} failed its quality gate for {output}; no checkpoint was written:\n  {lines}\n"
            + (advice or f"Loosen `{stage}.gates.<metric>` or change the stage's settings.")
        )
    return results
