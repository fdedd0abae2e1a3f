"""The Quiet-STaR objective (§4.4 of the paper; the reference's `first_and_last_mode`, `trice_mode`).

With NLL⁰_j the base pass's loss on x_{j+1} and NLLᵐⁱˣ_{j,s} the mixed talk step s's loss on x_{j+s+1}:

    L_NLL = a · mean NLL⁰ + (1 - a)/T · Σ_s mean_j NLLᵐⁱˣ_{·,s}                   a = 0.5 (original_loss_weight)
    r_j^ρ = Σ_{s<T} (NLL⁰_{j+s} - NLLᵐⁱˣ,ρ_{j,s})          (detached; ρ indexes the R thoughts of column j)
    r̃_j^ρ = max(0, r_j^ρ - mean_ρ' r_j^ρ')                  (baseline: the mean over the R thoughts)
    L_RL = -mean_{k, rows, j} r̃_j^ρ · log softmax(l_{j,k} / τ)[c_{j,k}]             τ = 3 (reinforce_temperature)
    L = L_NLL + β · L_RL                                                             β = 1e6 (policy_loss_beta)

Means over NLL terms count real targets only (the reference's `nonzero_mean`); the REINFORCE mean runs
over the columns whose T talk targets lie inside the window (the reference drops one more column).
Sampling is at τ = 1 but the log-probability at τ = 3: the estimator is off-policy, as in the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .engine import Thoughts


def token_nll(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L-1-s) NLL of column j's logits on x_{j+s+1} (0 where that target is padding), and the mask."""
    n, length = ids.shape
    tgt, ok = ids[:, s + 1 :], valid[:, s + 1 :].bool()
    lg = logits[:, : length - 1 - s].float()
    nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none").view(n, -1)
    return nll * ok, ok


def _mean(x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    return x.sum() / ok.sum().clamp(min=1)


def rewards(th: Thoughts, n_talk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """r (N, L-T) of the module docstring, detached, and the mask of columns with a real first target."""
    base, ok = token_nll(th.base_logits, th.input_ids, th.valid, 0)
    length = th.input_ids.shape[1]
    width = length - n_talk
    r = torch.zeros(base.shape[0], width, device=base.device)
    for s in range(n_talk):
        talk, _ = token_nll(th.mixed_logits[s], th.input_ids, th.valid, s)
        r = r + (base[:, s : s + width] - talk[:, :width])
    return r.detach(), ok[:, :width]


def centred(r: torch.Tensor, n_passes: int, remove_negative: bool) -> torch.Tensor:
    """r minus the mean over the R thoughts of the same column, clamped at 0 if `remove_negative`."""
    if n_passes > 1:
        grouped = r.view(-1, n_passes, r.shape[-1])
        r = (grouped - grouped.mean(dim=1, keepdim=True)).view_as(r)
    return r.clamp(min=0) if remove_negative else r


def quietstar_loss(
    th: Thoughts,
    n_talk: int,
    n_passes: int,
    *,
    original_loss_weight: float = 0.5,
    policy_beta: float = 1e6,
    remove_negative_rewards: bool = True,
) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
    """(L, scalar stats, the loss parts as tensors: nll, policy)."""
    base, ok = token_nll(th.base_logits, th.input_ids, th.valid, 0)
    nll_base = _mean(base, ok)
    talks = []
    for s in range(n_talk):
        t, tok = token_nll(th.mixed_logits[s], th.input_ids, th.valid, s)
        talks.append(_mean(t, tok))
    nll = original_loss_weight * nll_base + (1 - original_loss_weight) * sum(talks) / n_talk
    stats = {"loss_base": nll_base.item(), "loss_talk": (sum(talks) / n_talk).item()}
    parts = {"nll": nll}
    w = th.mix[0][..., 0]
    stats["mix_mean"] = _mean(w.detach() * th.valid, th.valid).item()
    policy = nll.new_zeros(())
    if th.thought_logp is not None and th.thought_ids.shape[-1] > 0:
        r, rok = rewards(th, n_talk)
        adv = centred(r, n_passes, remove_negative_rewards)
        logp = th.thought_logp[:, : r.shape[1], :]
        policy = -(adv[..., None] * logp).mean()
        stats.update(reward_mean=_mean(r * rok, rok).item(),
                     reward_positive_share=_mean(((r > 0) & rok).float(), rok).item(),
                     advantage_mean=_mean(adv * rok, rok).item(), policy_loss=policy.item())
    parts["policy"] = policy_beta * policy
    total = nll + policy_beta * policy
    stats["loss"] = total.item()
    return total, stats, parts
