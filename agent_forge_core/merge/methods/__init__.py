"""The merge-method registry, one class per method (mergekit's merge_methods): the registry imports its
methods, never the reverse."""
from __future__ import annotations

from ...errors import ConfigError
from .base import REQUIRED, MergeMethod, TensorInputs
from .breadcrumbs import Breadcrumbs, BreadcrumbsTies
from .dare import DareLinear, DareTies
from .linear import Linear
from .model_stock import ModelStock
from .passthrough import Passthrough
from .slerp import Slerp
from .task_arithmetic import TaskArithmetic
from .ties import Ties

METHODS: dict[str, type[MergeMethod]] = {m.name: m for m in (
    Linear, Slerp, TaskArithmetic, Ties, DareLinear, DareTies, Breadcrumbs, BreadcrumbsTies, ModelStock, Passthrough)}


def get_method(name: str) -> MergeMethod:
    if name not in METHODS:
        raise ConfigError(f"unknown merge_method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]()


def available_methods() -> list[str]:
    return sorted(METHODS)


__all__ = ["METHODS", "REQUIRED", "MergeMethod", "TensorInputs", "available_methods", "get_method"]
