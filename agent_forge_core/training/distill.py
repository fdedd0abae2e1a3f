"""Knowledge distillation from a float teacher (Hinton et al. 2015), shared by every stage that trains a
ternary student (BitNet QAT, the loop on a BitNet input):

    L = w_ce · CE(labels) + w_kl · T² · KL(p_teacher^T ‖ p_student^T)

with p^T = softmax(logits / T); the KL is averaged over every attended position (the teacher's whole
next-token distribution on the training text, not only on the labelled completion), and T² keeps its
gradient's scale independent of T (Hinton et al. §2). Low-bit QAT work (LLM-QAT, Liu et al. 2023; BitNet
Distillation, Wu et al. 2025) reports it far more token-efficient than cross-entropy alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..settings_base import Section


class DistillSettings(Section):
    kl_weight: float = Field(1.0, ge=0, description="Weight of KL(teacher ‖ student) on every text position.")
    ce_weight: float = Field(1.0, ge=0, description="Weight of the task's cross-entropy.")
    temperature: float = Field(1.0, gt=0)


def kl_to_teacher(logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor, T: float) -> torch.Tensor:
    """T² · mean over `mask`ed positions of KL(softmax(t_logits/T) ‖ softmax(logits/T)); logits [B, L, V]."""
    kl_tok = F.kl_div(F.log_softmax(logits.float() / T, -1), F.log_softmax(t_logits.float() / T, -1),
                      log_target=True, reduction="none").sum(-1)
    mask = mask.to(kl_tok.dtype)
    return (kl_tok * mask).sum() / mask.sum().clamp(min=1) * T * T


def teacher_logits(teacher, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def distilled_loss(teacher, cfg: DistillSettings):
    """A `training.loop.train` loss: the model's own next-token CE on its labels plus the KL to `teacher`."""
    def loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(**batch)
        kl = kl_to_teacher(out.logits[:, :-1], teacher_logits(teacher, batch)[:, :-1],
                           batch["attention_mask"][:, 1:], cfg.temperature)
        return cfg.ce_weight * out.loss + cfg.kl_weight * kl
    return loss
