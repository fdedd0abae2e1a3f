"""Settings of the Cognate stage (and of the LoRA adapters it trains)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..architecture import PROJECTIONS
from ..settings_base import Section, StageSection
from ..training.focuses import check_focuses


class LoraSettings(Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(PROJECTIONS))


class CognateSettings(StageSection):
    # quick: two focuses at 128 tokens (the whole chain must fit 45 minutes on 2 cores; a cognate at 256 tokens
    # took about 5 minutes there); full: three at 512
    profiles = {"full": {"steps": 600, "batch_size": 16, "max_len": 512, "warmup": 30, "lora": {"r": 32, "alpha": 64},
                         "focuses": ["reasoning", "memory", "language"]}}

    enabled: bool = True
    focuses: list[str] = Field(default_factory=lambda: ["reasoning", "memory"], min_length=1,
                               description="One variant per focus (training/focuses.py).")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    steps: int = Field(30, gt=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, gt=0)
    max_len: int = Field(128, gt=16, description="Tokens per training sequence (a task example with its shot fits; "
                         "replayed text is cut to it).")
    warmup: int = Field(4, ge=0)
    replay: float = Field(0.1, ge=0, lt=1, description="Share of a task focus's training sequences that are "
                          "held-in natural text instead (rehearsal against forgetting; `language` is all text).")
    train_precision: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="The steps' forward under bfloat16 autocast (the LoRA weights, the optimiser and the "
        "merge stay float32); see `train_attention` for the measured speed.")
    train_attention: Literal["eager", "sdpa"] = Field(
        "eager", description="transformers' attention kernel in the steps (`training/attention.py`): PyTorch's CPU "
        "flash-attention backward is slow on 2 cores; bench/cognate_speed.py measures each setting against "
        "float32 with sdpa side by side (bench/results/cognate_speed.json); on a GPU, sdpa.")
    seed: int = 0
    gates: dict[str, float] = Field(
        default_factory=lambda: {"perplexity": 0.5, "perplexity_ood": 0.5, "arithmetic": 0.25, "recall": 0.25,
                                 "instruction": 0.25}
    )

    @field_validator("focuses")
    @classmethod
    def _known_focuses(cls, v: list[str]) -> list[str]:
        return check_focuses(v)
