from __future__ import annotations

import torch

from ..sparsify import breadcrumbs_mask
from .base import REQUIRED, MergeMethod, TensorInputs
from .task_vectors import merge_task_vectors


def crumbs(delta: torch.Tensor, p: dict, i: int) -> torch.Tensor:
    return delta.mul_(breadcrumbs_mask(delta, float(p["density"]), float(p["gamma"])))


class Breadcrumbs(MergeMethod):
    """Model Breadcrumbs (Davari & Belilovsky 2023): mask both tails of each task vector -- the γ
    fraction of largest-magnitude outliers and the smallest entries -- keeping `density`, then task
    arithmetic. Unlike mergekit, γ = 0 means "drop no outliers" (plain magnitude pruning)."""

    name = "breadcrumbs"
    reference = "https://arxiv.org/abs/2312.06795"
    needs_base = True
    model_params = {"weight": REQUIRED, "density": 1.0, "gamma": 0.01}
    global_params = {"normalize": False, "lambda": 1.0, "int8_mask": False}
    consensus = False

    def merge(self, x: TensorInputs) -> torch.Tensor:
        return merge_task_vectors(x, crumbs, consensus=self.consensus)


class BreadcrumbsTies(Breadcrumbs):
    """Breadcrumbs masks followed by TIES sign election."""

    name = "breadcrumbs_ties"
    consensus = True
