from __future__ import annotations

import torch

from ..sparsify import magnitude_mask
from .base import REQUIRED, MergeMethod, TensorInputs
from .task_vectors import merge_task_vectors


def trim(delta: torch.Tensor, p: dict, i: int) -> torch.Tensor:
    return delta.mul_(magnitude_mask(delta, float(p["density"])))


class Ties(MergeMethod):
    """TIES-Merging (Yadav et al. 2023): trim each task vector to its top-`density` magnitudes, elect a
    sign per entry by summed weighted mass, average the agreeing entries (disjoint mean, `normalize`
    on by default), scale by λ. See `task_vectors.py` for the formula. `int8_mask` is accepted for
    mergekit compatibility; it only changes mergekit's mask dtype, not the result."""

    name = "ties"
    reference = "https://arxiv.org/abs/2306.01708"
    needs_base = True
    model_params = {"weight": REQUIRED, "density": 1.0}
    global_params = {"normalize": True, "lambda": 1.0, "int8_mask": False}

    def merge(self, x: TensorInputs) -> torch.Tensor:
        return merge_task_vectors(x, trim, consensus=True)
