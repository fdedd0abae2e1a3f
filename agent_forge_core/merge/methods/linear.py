from __future__ import annotations

import math

import torch

from .base import REQUIRED, MergeMethod, TensorInputs


class Linear(MergeMethod):
    """Weighted average (Wortsman et al. 2022, "Model soups"): θ = Σ_i w_i θ_i / Σ_i w_i.

    With `normalize: false` the weights are used as given (θ = Σ_i w_i θ_i). Every listed model takes
    part, the base model included if it is listed; a base that is not listed is ignored (as mergekit).
    """

    name = "linear"
    reference = "https://arxiv.org/abs/2203.05482"
    model_params = {"weight": REQUIRED}
    global_params = {"normalize": True}

    def merge(self, x: TensorInputs) -> torch.Tensor:
        idx = [i for i in range(len(x.tensors)) if x.model_params[i] is not None]
        w = [float(x.model_params[i]["weight"]) for i in idx]
        if x.params["normalize"]:
            # folded into the weights: no division pass over the tensor; weights summing to 0 give inf
            # here as the division would, and the engine's finiteness check names the tensor
            scale = 1 / total if (total := sum(w)) else math.inf
            w = [v * scale for v in w]
        out = torch.mul(x.tensors[idx[0]], w[0])
        for i, v in zip(idx[1:], w[1:]):
            out.add_(x.tensors[i], alpha=v)
        return out
