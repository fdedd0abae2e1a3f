"""The GPTQ column pass (Frantar et al. 2023, arXiv 2210.17323, Alg. 1), shared by scalar GPTQ and VPTQ.

Proxy loss tr(ΔW H ΔWᵀ) for W (out × in) of y = xWᵀ, H = XᵀX over calibration inputs. Columns are
quantized in order; each column's error e = (w_j − q_j)/U_jj is pushed onto the columns not yet quantized
through U, the upper Cholesky factor of H⁻¹ -- within a block of `block` columns at once, onto later blocks
lazily (Alg. 1's lazy batch updates) -- so later columns absorb what earlier ones lost.
"""
from __future__ import annotations

from typing import Callable

import torch

from ...errors import ConfigError


def damped_hessian(w: torch.Tensor, hessian: torch.Tensor | None, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, H) in float64, ready for the pass: inputs never active (H_jj = 0) get zero weights and a unit
    diagonal (their weights cannot matter), then H += damp·mean(diag H)·I (GPTQ's 1% dampening)."""
    N = w.shape[1]
    W = w.detach().double().clone()
    H = torch.eye(N, dtype=torch.float64) if hessian is None else hessian.detach().double().clone()
    if H.shape != (N, N):
        raise ConfigError(f"Hessian shape {tuple(H.shape)} does not match the input dimension {N}")
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(N, dtype=torch.float64)
    return W, H


def inverse_cholesky(H: torch.Tensor) -> torch.Tensor:
    """U upper triangular with UᵀU = H⁻¹."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def gptq_pass(W: torch.Tensor, U: torch.Tensor, quantize: Callable[[int, torch.Tensor], torch.Tensor],
              block: int = 128) -> None:
    """Quantize W's columns in order, in place (W ends holding the updated, not the quantized, columns).
    `quantize(j, column)` returns the column's quantized value (float64, shape (out,))."""
    M, N = W.shape
    for b0 in range(0, N, block):
        b1 = min(b0 + block, N)
        err = torch.zeros(M, b1 - b0, dtype=torch.float64)
        for j in range(b0, b1):
            e = (W[:, j] - quantize(j, W[:, j])) / U[j, j]
            W[:, j + 1: b1] -= e[:, None] * U[j, j + 1: b1][None, :]
            err[:, j - b0] = e
        W[:, b1:] -= err @ U[b0:b1, b1:]
