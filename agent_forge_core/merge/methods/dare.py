"""DARE (Yu et al. 2024, "Language Models are Super Mario"): drop each task-vector entry with probability
p = 1 − density, then rescale what is kept.

Two rescales, chosen by `rescale_mode`:
- `l1` (mergekit's `rescale: true`, our default so mergekit YAML means what it meant there): scale the
  kept entries so the task vector keeps its L1 norm, ‖δ‖₁ / ‖m⊙δ‖₁.
- `inverse_p` (the paper, Eq. 2): divide by (1 − p) = density, which keeps E[δ̂] = δ entrywise.
`rescale: false` keeps the dropped vector as is. Drops are drawn from a generator seeded by
`parameters.seed` and the tensor/model names, so a recipe always gives the same merge.
"""
from __future__ import annotations

import torch

from ...errors import ConfigError
from ..sparsify import random_drop_, rescale_l1_, tensor_generator
from .base import REQUIRED, MergeMethod, TensorInputs
from .task_vectors import merge_task_vectors


def drop_and_rescale(x: TensorInputs):
    mode = x.params["rescale_mode"] if x.params["rescale"] else None
    if mode not in (None, "l1", "inverse_p"):
        raise ConfigError(f"{x.name}: rescale_mode must be 'l1' or 'inverse_p', got {mode!r}")

    def fn(delta: torch.Tensor, p: dict, i: int) -> torch.Tensor:
        density = float(p["density"])
        model = x.models[i] if x.models else str(i)
        if density >= 1:
            return delta
        before = torch.linalg.vector_norm(delta, 1) if mode == "l1" else None
        # delta is the caller's scratch copy: masked in place
        random_drop_(delta, density, tensor_generator(int(x.seed), x.name, model))
        if mode == "l1":
            return rescale_l1_(delta, before)
        if mode == "inverse_p" and 0 < density < 1:
            return delta.div_(density)
        return delta

    return fn


class _Dare(MergeMethod):
    reference = "https://arxiv.org/abs/2311.03099"
    needs_base = True
    stochastic = True
    model_params = {"weight": REQUIRED, "density": 1.0}
    global_params = {"normalize": False, "lambda": 1.0, "rescale": True, "rescale_mode": "l1", "int8_mask": False}
    consensus = False

    def merge(self, x: TensorInputs) -> torch.Tensor:
        return merge_task_vectors(x, drop_and_rescale(x), consensus=self.consensus)


class DareLinear(_Dare):
    """DARE drops, then task arithmetic: θ = θ_base + λ Σ_i w_i δ̂_i."""

    name = "dare_linear"


class DareTies(_Dare):
    """DARE drops, then TIES sign election and disjoint sum (`normalize` off by default, as mergekit)."""

    name = "dare_ties"
    consensus = True
