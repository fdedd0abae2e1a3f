"""Masks for task vectors (δ = θ_model − θ_base): magnitude (TIES), rank window (Breadcrumbs), random (DARE).

Magnitude and rank-window masks select by rank of |δ| with `kthvalue` (a linear-time selection) instead
of sorting every tensor as mergekit does; ties at a threshold are broken by flat index, so exactly the
requested number of entries is kept.
"""
from __future__ import annotations

import hashlib

import torch


def rank_window_mask(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Boolean mask of the entries whose ascending rank of `x` lies in [lo, hi)."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    lo, hi = max(0, lo), min(n, hi)
    if hi <= lo:
        return torch.zeros_like(x, dtype=torch.bool)
    if lo == 0 and hi == n:
        return torch.ones_like(x, dtype=torch.bool)
    a = flat.kthvalue(lo + 1).values  # value at rank lo
    b = flat.kthvalue(hi).values  # value at rank hi-1
    mask = (flat > a) & (flat < b)
    if a == b:
        _keep_first(mask, flat == a, hi - lo)
    else:
        _keep_first(mask, flat == a, int((flat <= a).sum()) - lo)
        _keep_first(mask, flat == b, hi - int((flat < b).sum()))
    return mask.reshape(x.shape)


def _keep_first(mask: torch.Tensor, candidates: torch.Tensor, count: int) -> None:
    if count > 0:
        mask[candidates.nonzero().squeeze(1)[:count]] = True


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, ⌊density·n⌋) largest |δ| (TIES' trim step; Yadav et al. 2023, §3)."""
    n = delta.numel()
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    if density <= 0 or n == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    k = max(1, int(density * n))
    return rank_window_mask(delta.abs(), n - k, n)


def breadcrumbs_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023): drop the ⌊γ·n⌋ largest |δ| (outliers) and the
    smallest, keeping ⌊density·n⌋ entries. If density + γ > 1 fewer outliers are dropped so the
    density is still met. γ = 0 is plain magnitude pruning (it never empties the task vector)."""
    n = delta.numel()
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    keep = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - keep - n_top)
    return rank_window_mask(delta.abs(), n_bot, n_bot + keep)


def tensor_generator(seed: int, *names: str) -> torch.Generator:
    """A generator seeded by the recipe's seed and the tensor's identity: drops are reproducible and
    independent of the order tensors are merged in."""
    digest = hashlib.sha256("\0".join([str(seed), *names]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def random_mask(shape: torch.Size, density: float, gen: torch.Generator) -> torch.Tensor:
    """Keep each entry independently with probability `density` (DARE's drop with p = 1 − density)."""
    if density >= 1:
        return torch.ones(shape, dtype=torch.bool)
    return torch.rand(shape, generator=gen) < density


def rescale_l1(delta: torch.Tensor, masked: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mergekit's `rescale`: scale the kept entries so the masked vector has the original L1 norm."""
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)
