"""LoRA fine-tuning (Hu et al. 2021) with peft, then merging the adapter into full weights.

W' = W + (alpha / r) * B @ A, with A, B trained and W frozen. After training,
`merge_and_unload` folds B @ A into W, so the result is a plain model of the original architecture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from peft import LoraConfig, get_peft_model


@dataclass
class TrainStats:
    steps: int
    first_loss: float
    last_loss: float  # mean of the last 10% of steps
    trainable_params: int


def lora_config(r: int, alpha: float, dropout: float, target_modules: list[str]) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_lora(
    model,
    config: LoraConfig,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    lr: float,
    warmup: int,
    progress: Callable[[float, str], None] | None = None,
    seed: int = 0,
):
    """Train a LoRA adapter on `batches`; returns (peft model, stats). Merge with `merge_lora`."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = next(peft_model.parameters()).device
    peft_model.train()
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warmup, lr)
        batch = {k: v.to(device) for k, v in next(batches).items()}
        loss = peft_model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress and (step % 5 == 0 or step == steps - 1):
            progress((step + 1) / steps, f"step {step + 1}/{steps} loss {loss.item():.3f}")
    peft_model.eval()
    tail = losses[-max(1, steps // 10):]
    stats = TrainStats(steps, losses[0], sum(tail) / len(tail), sum(p.numel() for p in params))
    return peft_model, stats


def merge_lora(peft_model):
    """Fold the adapter into the base weights: a plain transformers model, no peft wrappers."""
    return peft_model.merge_and_unload()
