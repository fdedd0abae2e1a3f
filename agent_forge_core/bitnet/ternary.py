"""Quantizers of BitNet b1.58 (Ma et al. 2024, sec. 2; "Training Tips, Code and FAQ").

Weights, per tensor (absmean):   gamma = mean(|W|),  W~ = clamp(round(W / (gamma + eps)), -1, 1),
                                 effective weight = gamma * W~  (values in {-gamma, 0, +gamma}).
  per output channel (`per_channel`): gamma_i = mean_j |W_ij| for each row i, W~_ij = clamp(round(W_ij /
                                 (gamma_i + eps)), -1, 1): one scale per output instead of one per tensor
                                 (32 bits per row more; 576 x 576: +0.056 bits/weight).
Activations, per token (absmax): s = 127 / max(|x|) (clamped at 1e-5), x~ = clamp(round(x * s), -128, 127),
                                 effective activation = x~ / s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


def weight_codes(w: torch.Tensor, eps: float = EPS, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 0, 1} as int8, gamma as float32: 0-d, or [out, 1] with `per_channel`)."""
    a = w.detach().abs().float()
    gamma = a.mean(dim=-1, keepdim=True) if per_channel else a.mean()
    codes = torch.clamp(torch.round(w.detach().float() / (gamma + eps)), -1, 1).to(torch.int8)
    return codes, gamma


def dequant_weight(codes: torch.Tensor, gamma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return codes.to(dtype) * gamma.to(dtype)


def quant_weight(w: torch.Tensor, eps: float = EPS, per_channel: bool = False) -> torch.Tensor:
    codes, gamma = weight_codes(w, eps, per_channel)
    return dequant_weight(codes, gamma, w.dtype)


def quant_activation(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token absmax fake quantization to `bits` (symmetric, [-2^(b-1), 2^(b-1)-1])."""
    qmax = 2 ** (bits - 1) - 1
    scale = qmax / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return torch.clamp(torch.round(x * scale), -qmax - 1, qmax) / scale


def subln(x: torch.Tensor) -> torch.Tensor:
    """The parameter-free RMSNorm that b1.58 applies before quantizing a layer's input (SubLN)."""
    return F.rms_norm(x, (x.shape[-1],), eps=1e-6)
