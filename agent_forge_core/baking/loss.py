"""The Prompt Baking objective (Bhargava et al. 2024, eq. 1; reference `train_loop.py`).

    L = (1/|B|) Σ_{(x,y)∈B} Σ_{t∈gen(y)} Σ_v P_θ(v | u, x, y_<t) · [log P_θ(v | u, x, y_<t) − log P_θ'(v | x, y_<t)]

the KL from the prompted teacher (frozen θ, prompt u) to the unprompted student θ', summed over the positions
the model generated (executor-inserted result tokens carry no loss) and divided by the batch size, as the
reference's `F.kl_div(log_softmax(student), log_softmax(teacher), log_target=True)` summed over its masks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def baking_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`student_logits` [N, V] and `teacher_logprobs` [N, V] at the N generated positions of a batch."""
    student = F.log_softmax(student_logits.float(), dim=-1)
    return F.kl_div(student, teacher_logprobs.float(), log_target=True, reduction="sum") / batch_size


def gen_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict a generated token: logits at t−1 predict the token at t."""
    return mask[:, 1:].bool()
