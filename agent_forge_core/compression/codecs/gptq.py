"""Scalar GPTQ (Frantar et al. 2023, arXiv 2210.17323): RTN's group grid, with GPTQ's rounding.

The grid (per row, per group of `group` input columns: scale, and minimum when asymmetric) is fitted on
the original weights ("static groups", as AutoGPTQ's `static_groups`), so it is the grid RTN would store
and the artifact decodes exactly as RTN's. What changes is the rounding: columns are taken by decreasing
H_jj (act-order, §4 "Additional details") and each column's rounding error is pushed onto the columns not
yet rounded (`hessian_pass.gptq_pass`), minimizing tr(ΔW H ΔWᵀ) instead of ‖ΔW‖². Bits: as RTN (the
column order is not stored: each code stays at its own column).
"""
from __future__ import annotations

import torch

from .base import Encoded
from .hessian_pass import damped_hessian, gptq_pass, inverse_cholesky
from .rtn import RTN


class GPTQ(RTN):
    name = "gptq"
    uses_hessian = True

    def __init__(self, bits: int = 4, group: int = 64, symmetric: bool = False, damp: float = 0.01,
                 block: int = 128, act_order: bool = True):
        super().__init__(bits, group, symmetric)
        self.damp, self.block, self.act_order = damp, block, act_order

    def encode(self, w: torch.Tensor, hessian: torch.Tensor | None = None) -> Encoded:
        grid = self.grid(w)
        W, H = damped_hessian(w, hessian, self.damp)
        N = W.shape[1]
        perm = torch.sort(torch.diag(H), descending=True, stable=True).indices if self.act_order else torch.arange(N)
        W, H = W[:, perm], H[perm][:, perm]
        q = torch.empty(w.shape, dtype=torch.int16)
        col_grid = {k: v[:, :, 0].float() for k, v in grid.items()}  # (rows, groups)

        def quantize(j: int, col: torch.Tensor) -> torch.Tensor:
            c = int(perm[j])
            g = {k: v[:, c // self.group] for k, v in col_grid.items()}
            codes = self.round(col.float(), g)
            q[:, c] = codes.to(torch.int16)
            out = codes * g["scale"]
            return (out + g["min"] if "min" in g else out).double()

        gptq_pass(W, inverse_cholesky(H), quantize, self.block)
        rows, cols = w.shape
        return self.encoded(w.shape, q.reshape(rows, cols // self.group, self.group), grid)
