"""Merge recipes in mergekit's YAML format.

    merge_method: ties
    base_model: path/or/key
    models:
      - model: a
        parameters: {weight: [0.2, 0.8], density: 0.5}   # a list is a gradient over the layers
      - model: b
        parameters:
          weight: [{filter: self_attn, value: 0.3}, {value: 0.6}]   # per-tensor by name filter
    parameters: {normalize: true}
    dtype: float32

or, for passthrough (frankenmerges), `slices: [{sources: [{model: a, layer_range: [0, 16]}]}, ...]`.

Parameter values resolve as in mergekit: a scalar; a list of numbers interpolated linearly over
t = layer / (layers_in_slice - 1) (t = 0 for tensors outside the layers: embeddings, final norm, head);
or a list of {filter, value} where the first filter that is a substring of the tensor name wins.
Per-model parameters take precedence over top-level ones.
Extensions of ours (ignored by mergekit, so a recipe stays readable by both): `parameters.seed` (DARE's
random drops) and `parameters.rescale_mode` (see `methods/dare.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ..errors import ConfigError

Scalar = Union[bool, int, float, str]


class Conditional(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Union[Scalar, list[Scalar]]
    filter: Optional[str] = None


Setting = Union[Scalar, list[Scalar], Conditional, list[Conditional]]


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, Setting] | None = None


class SliceSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Setting] | None = None


class OutputSlice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SliceSource]
    parameters: dict[str, Setting] | None = None


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: Optional[str] = None
    models: Optional[list[ModelEntry]] = None
    slices: Optional[list[OutputSlice]] = None
    parameters: dict[str, Setting] | None = None
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None
    tokenizer_source: Optional[str] = None

    @model_validator(mode="after")
    def _one_input_form(self) -> "Recipe":
        if bool(self.models) == bool(self.slices):
            raise ValueError("give exactly one of `models` (whole-model merges) or `slices` (passthrough)")
        return self

    def referenced_models(self) -> list[str]:
        names = [self.base_model] if self.base_model else []
        for m in self.models or []:
            names.append(m.model)
        for s in self.slices or []:
            names += [src.model for src in s.sources]
        return list(dict.fromkeys(names))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_none=True, mode="json"), sort_keys=False)

    def with_models(self, mapping: dict[str, str]) -> "Recipe":
        """The same recipe with model references renamed (e.g. checkpoint keys -> local folders)."""
        data = self.model_dump(exclude_none=True, mode="json")
        if data.get("base_model"):
            data["base_model"] = mapping.get(data["base_model"], data["base_model"])
        for m in data.get("models", []):
            m["model"] = mapping.get(m["model"], m["model"])
        for s in data.get("slices", []):
            for src in s["sources"]:
                src["model"] = mapping.get(src["model"], src["model"])
        return Recipe.model_validate(data)


def parse_recipe(data: dict[str, Any] | str, origin: str = "recipe") -> Recipe:
    if isinstance(data, str):
        try:
            data = yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise ConfigError(f"{origin}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a recipe is a mapping with merge_method and models/slices")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, x['loc'])) or '(top)'}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"{origin}: invalid merge recipe: {msgs}") from None


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {str(p)!r} does not exist; pass a mergekit-style YAML file")
    return parse_recipe(p.read_text(), str(p))


def resolve(setting: Setting | None, tensor_name: str, t: float) -> Any:
    """mergekit's `evaluate_setting`: filters, then gradients interpolated at t in [0, 1]."""
    if setting is None:
        return None
    if isinstance(setting, Conditional):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if not setting:
        return None
    if all(isinstance(e, (bool, int, float, str)) for e in setting):
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        if isinstance(cond, Conditional) and (cond.filter in (None, "*") or cond.filter in tensor_name):
            return resolve(cond.value, tensor_name, t)
    return None
