"""Integer inference of a ternary layer: int8 activations times int8 ternary codes, accumulated in int32.

With per-token absmax activation codes x~ = clamp(round(x * s), -128, 127) (s = 127 / max|x|) and
weight codes W~ in {-1, 0, 1} with the tensor scale gamma (`ternary.py`):

    y = F.linear(x~ / s, gamma * W~) = (gamma / s) * (x~ @ W~^T)

The product x~ @ W~^T is an integer sum of at most 127 * in_features per output (no overflow in int32
for any in_features below 2^24), computed exactly by `torch._int_mm`; one float multiply per output
applies the scales. The fake-quant path (`BitLinear` at lam = 1) computes the same function in floating
point, so the two agree up to float32 rounding of its dot products (tested). Unlike the dequantizing path,
no float copy of the weights is made per call: the layer holds int8 codes only.

Layers that read the same input tensor (q, k and v; gate and up) share its codes: `input_codes` keeps the
last tensor it quantized, per thread, and reuses its codes when the next call passes that same object.
Measured on SmolLM2-135M (2 cores, 2 x 512 tokens): forward +3-4% tokens/s, 7 quantizations per layer -> 4.
Stacking those layers' codes into one GEMM (one `_int_mm` for q, k, v, one for gate, up) was measured slower
on CPU: forward 1.37x float32 vs 1.47x unstacked, prefill 1.46x vs 1.65x (bench/results/bitnet_speed_stacked_gemm.json).
"""
from __future__ import annotations

import threading

import torch

from .ternary import EPS, subln

_last = threading.local()


def activation_codes(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, per-token scale s as float32 [..., 1]) of `ternary.quant_activation`."""
    qmax = 2 ** (bits - 1) - 1
    x = x.float()
    scale = qmax / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    # in place: fresh activation-sized temporaries cost more than the integer matmul itself on CPU
    return (x * scale).round_().clamp_(-qmax - 1, qmax).to(torch.int8), scale


def input_codes(x: torch.Tensor, bits: int, norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`activation_codes` of x [..., in] as [tokens, in] (after a parameter-free RMSNorm if `norm`), reused
    when x is the very tensor the previous call on this thread quantized with the same settings. The entry
    holds a reference to x, so its id cannot pass to another tensor while the entry lives. (A caller that
    changed x in place between two layers would get stale codes; transformers' decoder layers pass the
    normed hidden states to q/k/v and gate/up unchanged.)"""
    entry = getattr(_last, "entry", None)
    if entry is not None and entry[0] is x and entry[1] == (bits, norm):
        return entry[2], entry[3]
    flat = x.reshape(-1, x.shape[-1])
    q, scale = activation_codes(subln(flat) if norm else flat, bits)
    _last.entry = (x, (bits, norm), q, scale)
    return q, scale


def supports(bits: int) -> bool:
    """Activation codes must fit int8 for the int8 x int8 -> int32 product."""
    return 2 <= bits <= 8


def ternary_linear(x: torch.Tensor, codes: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None,
                   bits: int = 8, norm: bool = False) -> torch.Tensor:
    """y = (gamma / s) * (x~ @ codes^T) + bias (gamma per output row where it has one), with `codes` the int8
    weight codes [out, in] (row-major: its transpose is the column-major right operand, measured faster than a
    row-major one on CPU)."""
    shape = x.shape
    q, scale = input_codes(x, bits, norm)
    # gamma: 0-d (one per tensor) or [out, 1] (one per output row, applied along y's last axis)
    y = torch._int_mm(q, codes.t()).float().mul_((gamma if gamma.dim() == 0 else gamma.reshape(1, -1)) / scale)
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype).reshape(*shape[:-1], codes.shape[0])
