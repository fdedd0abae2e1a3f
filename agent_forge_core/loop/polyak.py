"""Polyak averaging of phase 10 (stabilisation; Polyak & Juditsky 1992, here the exponential form):
θ̄ ← β·θ̄ + (1 − β)·θ after every optimiser step, β = 0.99, θ̄ starting at θ. The phase keeps whichever of the
last and the averaged weights scores better on validation (`swap` puts θ̄ in, and back)."""
from __future__ import annotations

import torch


class Polyak:
    def __init__(self, named_parameters, beta: float = 0.99):
        self.beta = beta
        self.avg = {n: p.detach().clone() for n, p in named_parameters}

    @torch.no_grad()
    def update(self, named_parameters) -> None:
        for n, p in named_parameters:
            self.avg[n].mul_(self.beta).add_(p.detach(), alpha=1 - self.beta)

    @torch.no_grad()
    def swap(self, named_parameters) -> None:
        """Exchanges the live weights and the average (twice restores both exactly)."""
        for n, p in named_parameters:
            tmp = p.detach().clone()
            p.copy_(self.avg[n])
            self.avg[n] = tmp
