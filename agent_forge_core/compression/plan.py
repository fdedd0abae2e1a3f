"""The compression plan: which codec (and parameters) each tensor gets, and the `auto` selection.

Rules map tensor-name patterns (fnmatch globs; the first matching rule wins) to a codec, `keep`
(stored as is, in `keep_dtype`), or `auto`. Tensors that are not 2-D matrices are always kept.

`auto` (`select_auto`): every candidate codec encodes the tensor; its error is the relative proxy loss
tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) where calibration statistics exist (H = I otherwise: relative squared
Frobenius error). Candidates over `error_budget` are dropped (unless none is under it: then the most
accurate stays). Among the rest, each tensor takes the candidate minimizing err + λ·bits/weight, with λ
the smallest value for which the model-wide bits per weight (every tensor, kept ones included) meet
`target_bpw`: the cheapest plan that meets the target, spending bits where they buy the most accuracy.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError


@dataclass
class Choice:
    codec: str  # a codec name, or "keep"
    params: dict[str, Any]
    rule: int  # index of the rule that matched


def match(name: str, shape: tuple[int, ...], rules: list[dict[str, Any]]) -> Choice:
    for i, r in enumerate(rules):
        if fnmatch.fnmatchcase(name, r["pattern"]):
            if len(shape) != 2 and r["codec"] != "keep":
                return Choice("keep", {}, i)  # codecs take matrices; vectors (norms, biases) stay
            return Choice(r["codec"], dict(r.get("params") or {}), i)
    return Choice("keep", {}, -1)


def relative_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor | None) -> float:
    d = (w_hat.double() - w.double())
    if hessian is None:
        return float((d * d).sum() / (w.double() ** 2).sum().clamp(min=1e-30))
    H = hessian.double()
    return float(torch.einsum("ij,jk,ik->", d, H, d) / torch.einsum("ij,jk,ik->", w.double(), H, w.double()).clamp(min=1e-30))


@dataclass
class Option:
    index: int  # into the candidate list
    bits: int
    error: float
    numel: int  # weights of the tensor: λ is per bit per weight, comparable across tensor sizes


def within_budget(options: dict[str, list[Option]], error_budget: float) -> dict[str, list[Option]]:
    """Each tensor's options within `error_budget` (the most accurate one where none is)."""
    allowed = {}
    for name, opts in options.items():
        ok = [o for o in opts if o.error <= error_budget]
        allowed[name] = ok or [min(opts, key=lambda o: o.error)]
    return allowed


def cheapest_bits(options: dict[str, list[Option]], error_budget: float) -> int:
    return sum(min(o.bits for o in opts) for opts in within_budget(options, error_budget).values())


def select_auto(options: dict[str, list[Option]], fixed_bits: int, total_weights: int, target_bpw: float | None,
                error_budget: float) -> dict[str, Option]:
    """Per tensor one option (see the module docstring). `fixed_bits`: bits of every tensor not chosen here."""
    allowed = within_budget(options, error_budget)

    def pick(lam: float) -> dict[str, Option]:
        return {n: min(opts, key=lambda o: (o.error + lam * o.bits / o.numel, o.bits)) for n, opts in allowed.items()}

    def bpw(sel: dict[str, Option]) -> float:
        return (fixed_bits + sum(o.bits for o in sel.values())) / total_weights

    best = pick(0.0)
    if target_bpw is None or bpw(best) <= target_bpw:
        return best
    cheapest = {n: min(opts, key=lambda o: o.bits) for n, opts in allowed.items()}
    if bpw(cheapest) > target_bpw + 1e-12:
        raise ConfigError(
            f"compression.target_bpw={target_bpw}: the cheapest plan within compression.error_budget="
            f"{error_budget} needs {bpw(cheapest):.3f} bits/weight; raise target_bpw or error_budget, or add cheaper "
            "auto candidates")
    lo, hi = 0.0, 1.0
    while bpw(pick(hi)) > target_bpw:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bpw(pick(mid)) > target_bpw else (lo, mid)
    return pick(hi)
