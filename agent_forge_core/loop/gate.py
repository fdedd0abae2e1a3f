"""The phase gate: whether a phase lowered the validation score by more than `loop.tolerance`, counting only the
part of an accuracy drop that is beyond the validation's noise.

EvoMerge's score splits into an exact part and an accuracy part, S = E + A:
    E = Σ w_m·term_m over perplexity and NLL metrics (means over thousands of tokens: taken as exact),
    A = Σ w_m·acc_m over accuracies (each measured on `loop.val_examples` items, standard error se_m).
Against the reference (the best phase kept so far) the drop is ΔE + ΔA, with ΔA = A_ref − A_now and its noise
    b = z·sqrt(Σ w_m² (se_ref,m² + se_now,m²)).
The gate counts the accuracy drop soft-thresholded at b, shrink(x, b) = sign(x)·max(|x| − b, 0) (a gain within
noise no longer pays for an exact loss either), and rolls back when
    ΔE + shrink(ΔA, b) > tolerance.
With z = 0 this is the plain score drop. Why: at 8 validation examples one item is 0.125 of accuracy, more than
the default tolerance, so a gate on the raw score rolls back phases for a single flipped answer
(bench/loop.py on the EvoMerge winner under the plain gate: six of ten phases rolled back in both arms, each for
instruction going 1/8 -> 0/8; under this gate none).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..evomerge.fitness import combined_score, score_se


@dataclass(frozen=True)
class Verdict:
    drop: float  # the plain score drop against the reference
    exact_drop: float  # ΔE
    accuracy_drop: float  # ΔA
    noise: float  # b
    effective: float  # ΔE + shrink(ΔA, b)
    tolerance: float
    reference_phase: int

    @property
    def rolled_back(self) -> bool:
        return not self.effective <= self.tolerance  # NaN rolls back

    def describe(self) -> str:
        return (f"the score is {self.drop:.4f} below phase {self.reference_phase}'s (the best kept): perplexity/NLL "
                f"{self.exact_drop:+.4f}, accuracies {self.accuracy_drop:+.4f} with noise ±{self.noise:.4f}, counted "
                f"{self.effective:.4f} against the tolerance {self.tolerance}")

    def as_dict(self) -> dict:
        return {**asdict(self), "rolled_back": self.rolled_back}


def shrink(x: float, b: float) -> float:
    return math.copysign(max(abs(x) - b, 0.0), x)


def reference_row(history: list[dict]) -> dict:
    """The kept phase (input included) with the highest validation score: what a phase must not fall below."""
    return max((r for r in history if "rolled_back" not in r), key=lambda r: r["score"])


def judge(ref: dict, metrics: dict[str, float], weights: dict[str, float], tolerance: float, z: float) -> Verdict:
    """The gate's verdict on `metrics` against the history row `ref` (its metrics, score and phase)."""
    accuracy = {m: w for m, w in weights.items() if f"{m}_se" in metrics and f"{m}_se" in ref["metrics"]}
    exact = {m: w for m, w in weights.items() if m not in accuracy}
    d_exact = combined_score(ref["metrics"], exact) - combined_score(metrics, exact)
    d_acc = combined_score(ref["metrics"], accuracy) - combined_score(metrics, accuracy)
    noise = z * math.hypot(score_se(ref["metrics"], accuracy), score_se(metrics, accuracy))
    return Verdict(drop=ref["score"] - combined_score(metrics, weights), exact_drop=d_exact, accuracy_drop=d_acc,
                   noise=noise, effective=d_exact + shrink(d_acc, noise), tolerance=tolerance,
                   reference_phase=ref["phase"])
