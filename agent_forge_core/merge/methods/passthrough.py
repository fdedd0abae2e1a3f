from __future__ import annotations

import torch

from .base import MergeMethod, TensorInputs


class Passthrough(MergeMethod):
    """Copies one input tensor (optionally times `scale`). With `slices` it stacks layer ranges of
    different models into a new model (a "frankenmerge"); the engine renumbers the layers."""

    name = "passthrough"
    max_models = 1
    model_params = {"scale": None}

    def merge(self, x: TensorInputs) -> torch.Tensor:
        (i,) = [i for i in range(len(x.tensors)) if x.model_params[i] is not None] or [0]
        scale = x.model_params[i].get("scale") if x.model_params[i] else None
        return x.tensors[i] if scale is None else x.tensors[i] * float(scale)
