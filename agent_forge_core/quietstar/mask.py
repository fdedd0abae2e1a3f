"""The attention masks of the parallel thought forward, additive floats (0 = attend, dtype-min = not).

Quiet-STaR §4.2 ("parallel generation"): after the base pass over x_1..x_L, step k feeds one new token in
every column j at once. The new token of column j attends to x_1..x_j (the causal row j of the base pass)
and to the tokens column j itself fed at steps 1..k-1 (and its own), never to another column's thought:
the mask is [C | I | ... | I], C the causal (and key-padding) mask, I an identity block per step
(the reference's `torch.eye` blocks). Additive floats make transformers' eager attention (which adds the
mask) and SDPA (which adds a float mask but reads a bool one as "attend") compute the same thing.
"""
from __future__ import annotations

import torch


def base_mask(key_valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, 1, L, L): causal, and no query attends to a padded key. `key_valid` is (N, L), 1 = real token."""
    n, length = key_valid.shape
    causal = torch.ones(length, length, dtype=torch.bool, device=key_valid.device).tril()
    allowed = causal[None] & key_valid.bool()[:, None, :]
    return _additive(allowed[:, None], dtype)


def identity_block(n: int, length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(N, 1, L, L): column j sees only its own token of that step."""
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return _additive(eye[None, None].expand(n, 1, length, length), dtype)


def step_mask(base: torch.Tensor, step: int) -> torch.Tensor:
    """(N, 1, L, (step + 1) L): the mask of the tokens fed at `step` (1-based) against the cache of the base
    pass and the steps before, plus themselves."""
    n, _, length, _ = base.shape
    eye = identity_block(n, length, base.dtype, base.device)
    return torch.cat([base] + [eye] * step, dim=-1)


def one_shot_mask(base: torch.Tensor, steps: int) -> torch.Tensor:
    """((steps + 1) L)-square mask of the whole block sequence [x; step 1; ...; step `steps`] in one forward:
    row block k is `step_mask(base, k)` followed by "not allowed" for later steps (what the incremental
    path computes with a cache; the equivalence is tested)."""
    n, _, length, _ = base.shape
    width = (steps + 1) * length
    blocked = torch.full((n, 1, length, width), torch.finfo(base.dtype).min, dtype=base.dtype, device=base.device)
    rows = []
    for k in range(steps + 1):
        row = blocked.clone()
        m = base if k == 0 else step_mask(base, k)
        row[..., : m.shape[-1]] = m
        rows.append(row)
    return torch.cat(rows, dim=2)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    low = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, low)
