"""The training loop shared by every stage that trains (LoRA fine-tunes, quantization-aware training).

nanoGPT-style: AdamW, linear warm-up then cosine decay to 10% of the peak, gradient clipping at 1.0.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .attention import attention_kernel
from .precision import autocast


@dataclass
class TrainStats:
    steps: int
    first_loss: float  # mean of the first 10% of steps (one step is too noisy when batches mix data kinds)
    last_loss: float  # mean of the last 10% of steps
    trainable_params: int
    wall_s: float  # the loop's wall time, `before_step` hooks included


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(
    model,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    lr: float,
    warmup: int,
    progress: Callable[[float, str], None] | None = None,
    before_step: Callable[[int], None] | None = None,
    seed: int = 0,
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
    precision: str = "float32",
    attention: str | None = None,
) -> TrainStats:
    """Trains the parameters of `model` that require grad; `before_step(step)` runs before each step
    (quantization warm-up schedules hook in there, outside the step's precision and kernel); `loss_fn(model,
    batch)` replaces the model's own next-token loss (distillation, `training/distill.py`). `precision`: the
    forward pass (and the loss function's, a teacher's included) under bfloat16 autocast (`precision.py`), the
    weights and the optimiser float32; `attention`: the kernel of the steps (`attention.py`; None keeps the
    model's)."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    model.train()
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        if before_step:
            before_step(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warmup, lr)
        batch = {k: v.to(device) for k, v in next(batches).items()}
        with attention_kernel(model, attention) if attention else nullcontext():
            with autocast(device, precision):
                loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress and (step % 5 == 0 or step == steps - 1):
            progress((step + 1) / steps, f"step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    span = max(1, steps // 10)
    head, tail = losses[:span], losses[-span:]
    return TrainStats(steps, sum(head) / len(head), sum(tail) / len(tail), sum(p.numel() for p in params),
                      time.perf_counter() - t0)
