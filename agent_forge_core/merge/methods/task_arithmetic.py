from __future__ import annotations

import torch

from .base import REQUIRED, MergeMethod, TensorInputs
from .task_vectors import merge_task_vectors


class TaskArithmetic(MergeMethod):
    """Task arithmetic (Ilharco et al. 2023): θ = θ_base + λ Σ_i w_i (θ_i − θ_base).

    `normalize: true` divides by Σ w_i (off by default, as in mergekit)."""

    name = "task_arithmetic"
    reference = "https://arxiv.org/abs/2212.04089"
    needs_base = True
    model_params = {"weight": REQUIRED}
    global_params = {"normalize": False, "lambda": 1.0, "int8_mask": False}

    def merge(self, x: TensorInputs) -> torch.Tensor:
        return merge_task_vectors(x, None, consensus=False)
