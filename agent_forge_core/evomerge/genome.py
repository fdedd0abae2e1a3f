"""The genome: a point of the unit cube [0, 1]^d that decodes to a merge recipe.

Genes, in order:
- one per allowed method (the method with the largest gene is used; absent when only one is allowed);
- per model and layer band: its weight (mapped to `weight_bounds`);
- per model and layer band: its density (`density_bounds`; used by TIES, DARE and Breadcrumbs);
- one task-vector scale lambda (`lambda_bounds`; used by task arithmetic, TIES and DARE).
With `bands` > 1 a model's weight and density become mergekit gradient lists over the layers.
Genes a method does not use are still in the genome (CMA-ES needs a fixed dimension); they simply do
not change that candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..merge.methods import METHODS, REQUIRED
from ..merge.recipe import Recipe

# What the genome can express, read from the merge methods themselves: a weight per model over any number
# of models; a density where the method sparsifies, a lambda where it scales task vectors.
SEARCHABLE = tuple(n for n, m in METHODS.items() if m.model_params.get("weight") is REQUIRED and m.max_models is None)


def uses_density(method: str) -> bool:
    return "density" in METHODS[method].model_params


def uses_lambda(method: str) -> bool:
    return "lambda" in METHODS[method].global_params


@dataclass(frozen=True)
class GenomeSpace:
    models: tuple[str, ...]  # checkpoint keys of the models being merged
    base: str | None  # their common parent (task vectors are taken from it)
    cfg: Any  # EvoMergeSettings

    @property
    def methods(self) -> list[str]:
        return [m for m in self.cfg.methods if self.base or not METHODS[m].needs_base]

    @property
    def dim(self) -> int:
        n_method = len(self.methods) if len(self.methods) > 1 else 0
        return n_method + 2 * len(self.models) * self.cfg.bands + 1

    def center(self) -> list[float]:
        return [0.5] * self.dim

    def alone(self, model: int) -> list[float]:
        """The genome of one input model by itself: `linear`, that model's weight at the top of its range,
        every other weight 0 (None when `linear` is not allowed or a weight cannot be 0)."""
        methods = self.methods
        if "linear" not in methods or self.cfg.weight_bounds[0] != 0:
            return None
        x = [0.5] * self.dim
        i = 0
        if len(methods) > 1:
            x[: len(methods)] = [1.0 if m == "linear" else 0.0 for m in methods]
            i = len(methods)
        nb = self.cfg.bands
        for m in range(len(self.models)):
            x[i + m * nb: i + (m + 1) * nb] = [1.0 if m == model else 0.0] * nb
        return x

    def decode(self, x: list[float]) -> Recipe:
        x = [min(1.0, max(0.0, float(v))) for v in x]
        if len(x) != self.dim:
            raise ValueError(f"genome has {len(x)} genes, expected {self.dim}")
        methods = self.methods
        i = 0
        if len(methods) > 1:
            genes = x[: len(methods)]
            method = methods[max(range(len(methods)), key=lambda k: genes[k])]
            i = len(methods)
        else:
            method = methods[0]
        nb = self.cfg.bands
        lo, hi = self.cfg.weight_bounds
        weights = [[lo + (hi - lo) * v for v in x[i + m * nb: i + (m + 1) * nb]] for m in range(len(self.models))]
        i += len(self.models) * nb
        dlo, dhi = self.cfg.density_bounds
        densities = [[dlo + (dhi - dlo) * v for v in x[i + m * nb: i + (m + 1) * nb]] for m in range(len(self.models))]
        i += len(self.models) * nb
        llo, lhi = self.cfg.lambda_bounds
        lam = llo + (lhi - llo) * x[i]

        def value(vals: list[float]):
            vals = [round(v, 6) for v in vals]
            return vals[0] if len(vals) == 1 else vals

        entries = []
        for key, w, d in zip(self.models, weights, densities):
            params = {"weight": value(w)}
            if uses_density(method):
                params["density"] = value(d)
            entries.append({"model": key, "parameters": params})
        params: dict = {}
        if uses_lambda(method):
            params["lambda"] = round(lam, 6)
        if METHODS[method].stochastic:
            params["seed"] = self.cfg.seed
        data = {"merge_method": method, "models": entries, "dtype": "float32"}
        if METHODS[method].needs_base:
            data["base_model"] = self.base
        if params:
            data["parameters"] = params
        return Recipe.model_validate(data)
