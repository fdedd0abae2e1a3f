"""Settings of the Quiet-STaR stage. Defaults are the CPU `quick` profile; `full` is the reference's.

Reference constants (ezelikman/quiet-star, `quiet-star-train.py` and `modeling_mistral.py`): n_ahead 12
(9 sampled thought tokens + start + end), n_ahead_talk 4, n_passes 2, batch 8, lr 1e-6, warm-up 20,
weight decay 0.001, gradient clip 1.0, Gumbel τ 1, REINFORCE τ 3, policy_loss_beta 1e6,
embedding_scale 100, original_loss_weight 0.5, negative rewards removed. Departures for CPU budgets are
the quick profile's values below (recorded in every manifest with the rest of this section).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..settings_base import StageSection
from ..training.focuses import check_focuses


# The reference's values of the settings that have one (`info.departures` records where ours differ).
REFERENCE = {"n_thought": 9, "n_talk": 4, "n_passes": 2, "seq_len": 256, "batch_size": 8, "steps": 100, "lr": 1e-6,
             "warmup": 20, "weight_decay": 0.001, "max_grad_norm": 1.0, "gumbel_temperature": 1.0, "reinforce_temperature": 3.0,
             "policy_beta": 1e6, "original_loss_weight": 0.5, "embedding_scale": 100.0,
             "remove_negative_rewards": True, "thoughts": "sampled", "head_lr": None}


class QuietStarSettings(StageSection):
    profiles = {"full": {"n_thought": 9, "n_talk": 4, "n_passes": 2, "seq_len": 256, "batch_size": 8,
                         "steps": 100, "lr": 1e-6, "warmup": 20, "eval_examples": 32, "eval_text_tokens": 1024}}

    enabled: bool = True

    n_thought: int = Field(2, ge=0, description="Sampled thought tokens per position (the reference's n_ahead - 3).")
    n_talk: int = Field(2, ge=1, description="True tokens teacher-forced after the thought (n_ahead_talk).")
    n_passes: int = Field(2, ge=1, description="Thoughts per position; their mean reward is the REINFORCE baseline.")
    thoughts: Literal["sampled", "pause"] = Field(
        "sampled", description="sampled: Quiet-STaR. pause: every thought token is the pad token and there is "
        "no REINFORCE term (the null-thought control: extra compute and a learned mix, no rationale).")
    seq_len: int = Field(48, gt=8, description="Tokens per training window.")
    batch_size: int = Field(2, gt=0, description="Windows per step (each repeated n_passes times).")
    steps: int = Field(8, gt=0, description="Optimiser steps (~12 s each on 2 CPU cores in quick).")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (reference 1e-6 for 7B, too small to move 135M in "
                      "tens of steps).")
    head_lr: float | None = Field(None, gt=0, description="Peak learning rate of the mixing head (None: `lr`, "
                                  "as the reference).")
    warmup: int = Field(5, ge=0)
    weight_decay: float = Field(0.001, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gumbel_temperature: float = Field(1.0, gt=0)
    reinforce_temperature: float = Field(3.0, gt=0)
    policy_beta: float = Field(1e6, ge=0, description="Weight of the REINFORCE term (the reference's 1e6).")
    original_loss_weight: float = Field(0.5, ge=0, le=1, description="Weight of the base pass's NLL.")
    embedding_scale: float = Field(100.0, gt=0, description="Thought embeddings are stored /s and used ×s: ×s "
                                   "their effective learning rate.")
    remove_negative_rewards: bool = True
    data: list[str] = Field(default_factory=lambda: ["reasoning", "language"], min_length=1,
                            description="Training mixture, equal shares (focuses: arithmetic with worked steps in "
                            "the eval's few-shot format, natural text), train splits only.")
    eval_examples: int = Field(16, gt=0, description="Held-out arithmetic examples for the thought metrics (the "
                               "benchmark uses 128).")
    eval_text_tokens: int = Field(512, gt=0, description="Held-out text tokens for the thought metrics.")
    grad_norm_every: int = Field(10, ge=0, description="Every k steps, measure the NLL and REINFORCE gradient "
                                 "norms apart (one extra backward); 0: never.")
    seed: int = 0
    gates: dict[str, float] = Field(default_factory=lambda: {
        "perplexity": 0.2, "perplexity_ood": 0.2, "arithmetic": 0.1, "recall": 0.1, "instruction": 0.1})

    @field_validator("data")
    @classmethod
    def _focuses(cls, v: list[str]) -> list[str]:
        return check_focuses(v)
