"""`target_bpw: auto`: the smallest model-wide bits per weight whose quality gates pass.

The Lagrangian plans (`plan.select_auto`) order the candidate plans by size: raising the target only ever
buys the tensors more accurate codings, so quality grows with the target (assumed monotone, as any
rate-distortion search does). Every tensor is encoded once per candidate up front; a probe only decodes the
chosen codings into the model and evaluates it on the validation split (the test split stays unseen).

Search: probe the most accurate plan (if it fails, nothing passes) and the cheapest (if it passes, it is the
answer), then bisect the target between the largest failing and the smallest passing plan until the bracket is
narrower than `tolerance` bits per weight or `max_probes` plans were evaluated (a target whose plan was
already probed costs nothing). The
answer is the smallest passing plan probed; every probe (the rate-quality curve walked) is returned with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

P = TypeVar("P")


@dataclass
class Probe:
    bpw: float
    passed: bool
    metrics: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # gate failures, described

    def row(self) -> dict:
        return {"bits_per_weight": round(self.bpw, 4), "passed": self.passed,
                **{k: round(v, 4) for k, v in sorted(self.metrics.items()) if not k.endswith("_se")},
                "failed": "; ".join(self.failures)}


@dataclass
class SearchResult(Generic[P]):
    plan: P | None  # None: not even the most accurate plan passes
    probes: list[Probe]


def smallest_passing(plan_at: Callable[[float | None], tuple[P, float]], cheapest_bpw: float,
                     judge: Callable[[P, float], Probe], tolerance: float, max_probes: int) -> SearchResult[P]:
    """`plan_at(target)` -> (plan, its bpw): the Lagrangian plan for a target (None: the most accurate);
    `judge(plan, bpw)` evaluates it."""
    probes: list[Probe] = []
    seen: dict[float, Probe] = {}

    def probe(plan: P, bpw: float) -> Probe:
        if bpw not in seen:
            seen[bpw] = judge(plan, bpw)
            probes.append(seen[bpw])
        return seen[bpw]

    hi, hi_bpw = plan_at(None)
    if not probe(hi, hi_bpw).passed:
        return SearchResult(None, probes)
    lo, lo_bpw = plan_at(cheapest_bpw)
    if probe(lo, lo_bpw).passed:
        return SearchResult(lo, probes)
    t_lo, t_hi = lo_bpw, hi_bpw  # every plan within a target <= t_lo fails; plan_at(t_hi) passes
    while t_hi - t_lo > tolerance and len(probes) < max_probes:
        mid = (t_lo + t_hi) / 2
        plan, bpw = plan_at(mid)  # the best plan of at most `mid` bits per weight
        if bpw <= lo_bpw:
            t_lo = mid  # no plan between the failing one and `mid`: look above
        elif probe(plan, bpw).passed:
            hi, hi_bpw = plan, bpw
            t_hi = bpw
        else:
            lo_bpw, t_lo = bpw, mid
    return SearchResult(hi, probes)
