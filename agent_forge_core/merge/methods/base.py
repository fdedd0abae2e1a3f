"""The merge-method interface and registry (one class per method, as in mergekit)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch



@dataclass
class TensorInputs:
    """One output tensor's inputs: the tensors of every listed model (and the base), their per-model
    parameters already resolved for this tensor, and the method's global parameters."""

    name: str
    tensors: list[torch.Tensor]  # in recipe order, float32
    model_params: list[dict[str, Any]]
    base_index: int | None  # index of the base model among `tensors`, if it is listed/added
    params: dict[str, Any]
    seed: int = 0
    models: list[str] | None = None

    @property
    def base(self) -> torch.Tensor:
        return self.tensors[self.base_index]

    def others(self) -> list[int]:
        return [i for i in range(len(self.tensors)) if i != self.base_index]


class MergeMethod:
    name: ClassVar[str]
    reference: ClassVar[str] = ""
    needs_base: ClassVar[bool] = False
    min_models: ClassVar[int] = 1  # not counting the base
    max_models: ClassVar[int | None] = None
    model_params: ClassVar[dict[str, Any]] = {}  # name -> default (REQUIRED if it must be given)
    global_params: ClassVar[dict[str, Any]] = {}
    stochastic: ClassVar[bool] = False  # draws random numbers: seeded by `parameters.seed`

    def merge(self, x: TensorInputs) -> torch.Tensor:
        raise NotImplementedError


REQUIRED = object()
