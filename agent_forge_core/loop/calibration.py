"""The calibration pass of phase 3 (issue 15): accuracy per difficulty level, a logistic fit, and the level
where the fit crosses the curriculum's target — the curriculum's starting difficulty d*.

    acc(d) = 1 / (1 + exp(s·(d − m)))      (m: the level of 50% accuracy, s > 0: how fast it falls)
    d*     = m − ln(a* / (1 − a*)) / s

fitted by least squares on the logit of the measured accuracies (each clipped to [ε, 1 − ε], weighted by the
binomial information acc·(1 − acc), the same n at every level, so that levels measured at 0 or 1 count little).
"""
from __future__ import annotations

import math
from typing import Callable


def fit_logistic(levels: list[float], accuracies: list[float], eps: float = 0.02) -> tuple[float, float]:
    """(m, s) of acc(d) = 1/(1 + e^{s(d − m)})."""
    xs, ys, ws = [], [], []
    for d, a in zip(levels, accuracies):
        a = min(1 - eps, max(eps, a))
        xs.append(d)
        ys.append(math.log(a / (1 - a)))  # logit(acc) = −s·d + s·m
        ws.append(a * (1 - a))
    sw = sum(ws)
    mx, my = sum(w * x for w, x in zip(ws, xs)) / sw, sum(w * y for w, y in zip(ws, ys)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
    slope = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys)) / sxx if sxx else 0.0
    if slope >= 0:
        raise ValueError(f"accuracy does not fall with difficulty ({dict(zip(levels, accuracies))}): no curriculum "
                         "can be fitted; check the graded generator or measure more examples per level")
    s = -slope
    return mx + my / s, s


def target_level(m: float, s: float, target: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, m - math.log(target / (1 - target)) / s))


def calibrate(accuracy_at: Callable[[int], float], levels: list[int], target: float, n: int) -> dict:
    """Measures `accuracy_at(level)` for every level, fits the logistic and returns the row the history keeps."""
    accs = [accuracy_at(d) for d in levels]
    row = {"levels": levels, "accuracy": accs, "n_per_level": n}
    try:
        m, s = fit_logistic(levels, accs)
        row.update(m=m, s=s, d_star=target_level(m, s, target, min(levels), max(levels)))
    except ValueError as e:  # flat accuracies: start at the easiest level and let the controller move
        row.update(d_star=float(min(levels)), fit_error=str(e))
    return row
