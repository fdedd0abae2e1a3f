"""Settings of the final compression stage: the plan (rules), `auto`'s candidates and budget."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..settings_base import Section, StageSection, known
from .codecs import CODECS, get_codec

PLAN_CHOICES = ("auto", "keep")  # besides a codec: choose per tensor, or store the tensor as it is


class CompressionRule(Section):
    pattern: str = Field(description="fnmatch glob over tensor names, e.g. '*.mlp.*_proj.weight'; the first match wins.")
    codec: str = Field(description="A codec (seedlm, vptq, hyper, rtn), `auto` or `keep`.")
    params: dict[str, Any] = Field(default_factory=dict, description="The codec's parameters (see its docstring).")

    @field_validator("codec")
    @classmethod
    def _known(cls, v: str) -> str:
        return known(v, [*sorted(CODECS), *PLAN_CHOICES], "codec")


class AutoCandidate(Section):
    codec: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("codec")
    @classmethod
    def _known(cls, v: str) -> str:
        return known(v, sorted(CODECS), "codec")


class CompressionSettings(StageSection):
    rules: list[CompressionRule] = Field(
        default_factory=lambda: [
            CompressionRule(pattern="*_proj.weight", codec="auto"),
            CompressionRule(pattern="*embed_tokens.weight", codec="rtn", params={"bits": 8, "group": 64}),
            CompressionRule(pattern="*", codec="keep"),
        ],
        min_length=1, description="Tensor-name pattern -> codec (first match); tensors that match none are kept.",
    )
    auto_candidates: list[AutoCandidate] = Field(
        default_factory=lambda: [
            AutoCandidate(codec="vptq", params={"v": 4, "k": 256}),
            AutoCandidate(codec="vptq", params={"v": 4, "k": 256, "residual_k": 16}),
            AutoCandidate(codec="hyper", params={"n": 256, "spacing": "geometric"}),
            AutoCandidate(codec="rtn", params={"bits": 6, "group": 64}),
        ],
        min_length=1, description="What `auto` tries on each tensor (each one encodes it: cost adds up).",
    )
    error_budget: float = Field(0.05, gt=0, description="auto: largest relative (Hessian-weighted) error a tensor may get.")
    target_bpw: float | None = Field(4.5, gt=0, description="auto: model-wide bits per weight to meet (all tensors counted).")
    keep_dtype: Literal["float16", "float32"] = Field("float16", description="How kept tensors (norms...) are stored.")
    calibration_tokens: int = Field(4096, ge=0, description="Held-in text tokens for the Hessians (0: no Hessian).")
    calibration_len: int = Field(256, gt=8)
    seed: int = 0
    gates: dict[str, float] = Field(default_factory=lambda: {"perplexity": 1.0, "perplexity_ood": 1.0})

    @model_validator(mode="after")
    def _codec_params(self) -> "CompressionSettings":
        for r in [*self.rules, *self.auto_candidates]:
            if r.codec not in PLAN_CHOICES:
                get_codec(r.codec, **r.params)  # unknown or invalid parameters fail here, before any work
        return self
