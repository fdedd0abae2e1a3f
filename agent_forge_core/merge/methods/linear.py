from __future__ import annotations

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
        out = torch.zeros_like(x.tensors[idx[0]])
        total = 0.0
        for i in idx:
            w = float(x.model_params[i]["weight"])
            out.add_(x.tensors[i], alpha=w)
            total += w
        if x.params["normalize"]:
            out.div_(total)
        return out
