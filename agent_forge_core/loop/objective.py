"""The loop's training loss on one batch.

    L = w_ce · CE(labels) + w_kl · T² · KL(p_teacher^T ‖ p_student^T) + L_heads

CE over the label positions (the completion of a task example, every token of a text window); the KL term
(`training/distill.py`) over every attended position, only where a float teacher is given;
L_heads the self-model and confidence heads' loss (`selfmodel.py`) when they are on. Without a teacher the loss
is the plain CE (w_ce is not applied then, so an un-distilled phase trains exactly as the BitNet stage's QAT).

Also returns the teacher-forced exact-match of each labelled row (every completion token the argmax): the
training accuracy the difficulty curriculum holds at its target, free from the training forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..training.distill import kl_to_teacher, teacher_logits


def batch_loss(model, batch: dict[str, torch.Tensor], teacher=None, distill=None, heads=None):
    """(loss, stats, (correct rows, labelled rows), per-position (nll, correct, mask) for the confidence AUROC)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=heads is not None)
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    lab_mask = labels != -100
    nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none") * lab_mask
    ce = nll.sum() / lab_mask.sum().clamp(min=1)
    stats = {"ce": float(ce.detach())}
    loss = ce
    if teacher is not None:
        kl = kl_to_teacher(logits, teacher_logits(teacher, batch)[:, :-1], batch["attention_mask"][:, 1:],
                           distill.temperature)
        stats["kl"] = float(kl.detach())
        loss = distill.ce_weight * ce + distill.kl_weight * kl
    pred = logits.argmax(-1)
    tok_ok = (pred == labels) & lab_mask
    rows = lab_mask.any(-1)
    row_ok = ((tok_ok | ~lab_mask).all(-1) & rows)
    stats["loss"] = float(loss.detach())  # the model's own objective; the heads' loss is logged apart
    positions = None
    if heads is not None:
        hs = tuple(h[:, :-1] for h in out.hidden_states)
        aux, hstats = heads(hs, nll, lab_mask)
        loss = loss + aux
        stats.update(heads_loss=float(aux.detach()), self_mse=hstats["self_mse"],
                     confidence_mse=hstats["confidence_mse"])
        positions = (nll.detach(), tok_ok, lab_mask, hstats["confidence"])
    return loss, stats, (int(row_ok.sum()), int(rows.sum())), positions
