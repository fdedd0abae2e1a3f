"""Quiet-STaR training: the whole model, the thought embeddings and the mixing head, one objective
(`loss.quietstar_loss`), AdamW with linear warm-up and linear decay to 0 (the reference trains with the HF
Trainer's default schedule; the mixing head peaks at `head_lr`, the reference's single lr when unset),
gradients clipped at `max_grad_norm` after the REINFORCE term is added.

Every `grad_norm_every` steps the NLL and the β-weighted REINFORCE gradients are measured apart (two
backward passes over the same graph): with β = 1e6 and clipping at 1.0, the update direction is
essentially the REINFORCE term whenever some advantage is positive (design note, pitfall 2).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from .engine import think
from .loss import quietstar_loss
from .settings import QuietStarSettings
from .state import ThoughtState


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _norm(grads) -> float:
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))


def train_quietstar(
    model,
    state: ThoughtState,
    batches: Iterator[dict[str, torch.Tensor]],
    cfg: QuietStarSettings,
    pad_id: int,
    progress: Callable[[float, str], None] | None = None,
) -> list[dict[str, float]]:
    """Trains in place; returns the per-step history (losses, rewards, mixing weight, gradient norms, lr)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters()] + list(state.parameters())
    for p in params:
        p.requires_grad_(True)
    head = list(state.head.parameters())
    head_ids = {id(h) for h in head}
    rest = [p for p in params if id(p) not in head_ids]
    # the head starts from zero and is new, so it may learn faster than the pretrained weights (`head_lr`)
    opt = torch.optim.AdamW([{"params": rest, "peak": cfg.lr}, {"params": head, "peak": cfg.head_lr or cfg.lr}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay)
    device = next(model.parameters()).device
    pause = cfg.thoughts == "pause"
    model.train()
    history = []
    for step in range(cfg.steps):
        lr = lr_at(step, cfg.steps, cfg.warmup, cfg.lr)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.warmup, g["peak"])
        batch = next(batches)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        forced = None
        if pause:
            forced = torch.full((ids.shape[0] * cfg.n_passes, ids.shape[1], cfg.n_thought), pad_id, device=device)
        th = think(model, state, ids, mask, n_thought=cfg.n_thought, n_talk=cfg.n_talk, n_passes=cfg.n_passes,
                   sampler="forced" if pause else "gumbel", forced=forced, generator=gen,
                   gumbel_temperature=cfg.gumbel_temperature,
                   policy_temperature=None if pause else cfg.reinforce_temperature, pad_id=pad_id)
        loss, stats, parts = quietstar_loss(
            th, cfg.n_talk, cfg.n_passes, original_loss_weight=cfg.original_loss_weight,
            policy_beta=0.0 if pause else cfg.policy_beta, remove_negative_rewards=cfg.remove_negative_rewards)
        if cfg.grad_norm_every and step % cfg.grad_norm_every == 0 and parts["policy"].requires_grad:
            parts["nll"].backward(retain_graph=True)
            nll_grads = [None if p.grad is None else p.grad.clone() for p in params]
            stats["grad_norm_nll"] = _norm(nll_grads)
            parts["policy"].backward()
            stats["grad_norm_policy"] = _norm(
                [None if p.grad is None else (p.grad if g is None else p.grad - g) for p, g in zip(params, nll_grads)])
            del nll_grads
        else:
            loss.backward()
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        stats.update(step=step, lr=lr)
        history.append(stats)
        if progress and (step % 5 == 0 or step == cfg.steps - 1):
            progress((step + 1) / cfg.steps, f"step {step + 1}/{cfg.steps} loss {stats['loss']:.3f} "
                     f"base {stats['loss_base']:.3f} talk {stats['loss_talk']:.3f}")
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return history
