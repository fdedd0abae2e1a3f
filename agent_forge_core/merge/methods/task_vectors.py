"""Shared machinery of the task-vector family (task arithmetic, TIES, DARE, Breadcrumbs).

For models i with task vectors δ_i = θ_i − θ_base, weights w_i and a per-model mask m_i (sparsification):

    d_i = w_i · (m_i ⊙ δ_i)                      (rescaled after masking where the method says so)
    without consensus:  D = Σ_i d_i,              W = Σ_i w_i
    with consensus (TIES sign election, Yadav et al. 2023 §3): s = sign(Σ_i d_i) (0 counts as +),
                        a_i = [sign(d_i) = s],    D = Σ_i a_i d_i,   W = Σ_i a_i w_i  (elementwise)
    θ = θ_base + λ · (D / W if normalize else D)

`normalize` with consensus is the TIES "disjoint mean"; W = 0 entries divide by 1.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from .base import TensorInputs

_POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="merge")
MaskFn = Callable[[torch.Tensor, dict, int], torch.Tensor]  # (delta, model params, model index) -> masked delta


def merge_task_vectors(x: TensorInputs, sparsify: MaskFn | None, consensus: bool) -> torch.Tensor:
    base = x.base
    others = [i for i in x.others() if x.model_params[i] is not None]
    if not others:
        return base.clone()
    deltas = torch.empty((len(others), *base.shape), dtype=base.dtype)
    weights = torch.tensor([float(x.model_params[i]["weight"]) for i in others], dtype=base.dtype)

    def fill(j: int) -> None:
        i = others[j]
        delta = torch.sub(x.tensors[i], base, out=deltas[j])
        if sparsify is not None:
            delta = sparsify(delta, x.model_params[i], i)
        deltas[j] = delta * weights[j]

    if sparsify is not None and base.numel() >= 1 << 16:
        # rank selection (kthvalue) runs on one core: trim the models' task vectors side by side
        list(_POOL.map(fill, range(len(others))))
    else:
        for j in range(len(others)):
            fill(j)
    w = weights.reshape(-1, *([1] * base.dim()))
    if consensus:
        elected = torch.where(deltas.sum(0) >= 0, 1.0, -1.0).to(base.dtype)
        agree = deltas.sign() == elected
        mixed = deltas.mul_(agree).sum(0)  # in place: merges stay a few tensors in memory
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(0)
        divisor = weights.sum()
        if divisor.abs() < 1e-8:
            divisor = torch.ones_like(divisor)
    if x.params["normalize"]:
        mixed = mixed / divisor
    lam = float(x.params["lambda"])
    if lam != 1:
        mixed = mixed * lam
    return base + mixed
