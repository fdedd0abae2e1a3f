"""Grokfast-EMA (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients", arXiv
2405.20233, Algorithm 2; reference ironjr/grokfast `gradfilter_ema`).

Per parameter, with g_t the gradient of step t:

    μ_0 = g_0,   μ_t = α·μ_{t−1} + (1 − α)·g_t,   ĝ_t = g_t + λ·μ_t

(the EMA starts from the first gradient, so step 0 gives ĝ_0 = (1 + λ)·g_0). Defaults α = 0.98, λ = 2 (the
README's modular-arithmetic run). It runs between `backward()` and the optimiser step and **before** clipping:
a clip at 1.0 after the filter scales the amplified slow component back whenever ‖ĝ‖ > 1 and so undoes most of λ;
`__call__` returns both norms so the caller can log what the clip did. μ is one float copy of every trainable
parameter (0.54 GB for a 135M model).
"""
from __future__ import annotations

from typing import Iterable

import torch


class GrokfastEMA:
    def __init__(self, alpha: float = 0.98, lamb: float = 2.0):
        if not 0 <= alpha < 1:
            raise ValueError(f"grokfast alpha {alpha}: the EMA's decay must lie in [0, 1)")
        self.alpha, self.lamb = alpha, lamb
        self.mu: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> tuple[float, float]:
        """Filters each `.grad` in place; returns the global gradient norm before and after."""
        before = after = 0.0
        for name, p in named_parameters:
            if p.grad is None:
                continue
            g = p.grad
            before += float(g.float().pow(2).sum())
            mu = self.mu.get(name)
            if mu is None:
                mu = g.detach().clone()
            # the reference's operation order, so the result is bit-identical to it
            mu = mu * self.alpha + g.detach() * (1 - self.alpha)
            self.mu[name] = mu
            p.grad = g + mu * self.lamb
            after += float(p.grad.float().pow(2).sum())
        return before ** 0.5, after ** 0.5

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"grokfast.{n}": t for n, t in self.mu.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.mu = {n.removeprefix("grokfast."): t.clone() for n, t in tensors.items() if n.startswith("grokfast.")}
