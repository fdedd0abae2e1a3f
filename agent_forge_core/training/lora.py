"""LoRA fine-tuning (Hu et al. 2021) with peft, then merging the adapter into full weights.

W' = W + (alpha / r) * B @ A, with A, B trained and W frozen. After training,
`merge_and_unload` folds B @ A into W, so the result is a plain model of the original architecture.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from peft import LoraConfig, get_peft_model

from .loop import TrainStats, train


def lora_config(r: int, alpha: float, dropout: float, target_modules: list[str]) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")


def train_lora(
    model,
    config: LoraConfig,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    lr: float,
    warmup: int,
    progress: Callable[[float, str], None] | None = None,
    seed: int = 0,
    precision: str = "float32",
    attention: str | None = None,
) -> tuple[object, TrainStats]:
    """Train a LoRA adapter on `batches`; returns (peft model, stats). Merge with `merge_lora`. `precision` and
    `attention`: the steps' autocast and attention kernel (`loop.train`)."""
    torch.manual_seed(seed)  # LoRA's A matrices are initialised randomly
    peft_model = get_peft_model(model, config)
    stats = train(peft_model, batches, steps, lr, warmup, progress, seed=seed, precision=precision, attention=attention)
    return peft_model, stats


def merge_lora(peft_model):
    """Fold the adapter into the base weights: a plain transformers model, no peft wrappers."""
    return peft_model.merge_and_unload()
