from .base import METHODS, MergeMethod, TensorInputs, available_methods, get_method, register

__all__ = ["METHODS", "MergeMethod", "TensorInputs", "available_methods", "get_method", "register"]
