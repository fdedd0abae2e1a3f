"""BitLinear: a drop-in nn.Linear with BitNet b1.58 quantization, trainable with the straight-through
estimator, and a packed inference module that computes the same function from stored codes.

Training keeps the full-precision latent weight W. With warm-up coefficient lam in [0, 1]:
    W_eff = W + lam * (Q(W) - W).detach()        x_eff = x + lam * (Q8(x) - x).detach()
so the forward pass mixes in the quantized values while the gradient with respect to W (and x) is the
identity (STE). At lam = 1 in eval mode, the layer computes exactly F.linear(Q8(x), gamma * W~), which
is also what `PackedBitLinear` computes from the packed codes (in integer arithmetic by default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import int_matmul
from .packing import pack, unpack
from .ternary import dequant_weight, quant_activation, quant_weight, subln, weight_codes

KERNELS = ("int8", "dequant")


def check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"PackedBitLinear kernel {kernel!r}: use one of {KERNELS}")


class BitLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = False, act_bits: int = 8,
                 norm: bool = False, per_channel: bool = False, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.act_bits, self.per_channel = act_bits, per_channel  # per_channel: one gamma per output row
        # The b1.58 recipe normalizes activations before quantizing them (SubLN). Off by default when
        # converting a pretrained model: inputs of o_proj/down_proj are not normalized there, and a
        # parameter-free RMSNorm would change the function the model computes.
        self.norm = norm
        self.register_buffer("lam", torch.tensor(1.0), persistent=False)

    @classmethod
    def from_linear(cls, lin: nn.Linear, act_bits: int = 8, norm: bool = False,
                    per_channel: bool = False) -> "BitLinear":
        new = cls(lin.in_features, lin.out_features, lin.bias is not None, act_bits, norm, per_channel,
                  device=lin.weight.device, dtype=lin.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(lin.weight)
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        return new

    def _prenorm(self, x: torch.Tensor) -> torch.Tensor:
        return subln(x) if self.norm else x

    def effective_weight(self) -> torch.Tensor:
        """W + lam * (Q(W) - W).detach(): Q(W) in value, identity in gradient."""
        lam = float(self.lam)
        if lam <= 0:
            return self.weight
        q = quant_weight(self.weight, per_channel=self.per_channel)
        if lam >= 1.0 and not torch.is_grad_enabled():
            return q
        return self.weight + (lam * (q - self.weight)).detach()

    def effective_input(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prenorm(x)
        lam = float(self.lam)
        if lam <= 0:
            return x
        if lam >= 1.0 and not torch.is_grad_enabled():
            return quant_activation(x, self.act_bits)
        return x + (lam * (quant_activation(x, self.act_bits) - x)).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # at lam = 1 without grad this is exactly F.linear(Q8(x), gamma * W~), as in PackedBitLinear
        return F.linear(self.effective_input(x), self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act_bits={self.act_bits}, norm={self.norm}, per_channel={self.per_channel}"


class PackedBitLinear(nn.Module):
    """Inference from packed ternary codes, unpacked once (to int8) at construction.

    `kernel`: "int8" multiplies int8 activation codes by the int8 weight codes with int32 accumulation
    (`int_matmul.py`; exact products, no float weight copy per call); "dequant" rebuilds gamma * W~ in the
    input's dtype per call and runs a float matmul (the reference path, and the fallback where `_int_mm`
    does not apply: activations wider than 8 bits, or CUDA shapes it rejects).
    """

    def __init__(self, packed: torch.Tensor, gamma: torch.Tensor, shape: tuple[int, int], fmt: str,
                 bias: torch.Tensor | None = None, act_bits: int = 8, norm: bool = False, dtype=torch.float32,
                 kernel: str = "int8"):
        super().__init__()
        check_kernel(kernel)
        self.out_features, self.in_features = shape
        self.act_bits, self.norm, self.fmt, self.kernel = act_bits, norm, fmt, kernel
        self.register_buffer("codes", unpack(packed, shape, fmt))
        # a 0-d tensor scale, or one per output row as [out, 1] (broadcasts over the codes' rows)
        self.register_buffer("gamma", gamma.float().reshape(() if gamma.numel() == 1 else (-1, 1)))
        self.register_buffer("bias", None if bias is None else bias.to(dtype))
        self.dtype = dtype

    def _int8_applies(self, x: torch.Tensor) -> bool:
        if self.kernel != "int8" or not int_matmul.supports(self.act_bits):
            return False
        # CUDA's int8 GEMM wants more than 16 rows and dimensions in multiples of 8
        return x.device.type == "cpu" or (x[..., 0].numel() > 16 and self.in_features % 8 == 0
                                          and self.out_features % 8 == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._int8_applies(x):
            return int_matmul.ternary_linear(x, self.codes, self.gamma, self.bias, self.act_bits, self.norm)
        if self.norm:
            x = subln(x)
        w = dequant_weight(self.codes, self.gamma, x.dtype)
        return F.linear(quant_activation(x, self.act_bits), w, self.bias)

    @classmethod
    def from_bitlinear(cls, layer: BitLinear, fmt: str) -> "PackedBitLinear":
        codes, gamma = weight_codes(layer.weight, per_channel=layer.per_channel)
        return cls(pack(codes, fmt), gamma, tuple(layer.weight.shape), fmt,
                   None if layer.bias is None else layer.bias.detach(), layer.act_bits, layer.norm, layer.weight.dtype)


def set_kernel(model: nn.Module, kernel: str) -> None:
    """Switch every PackedBitLinear of `model` to `kernel` (one of KERNELS)."""
    check_kernel(kernel)
    for m in model.modules():
        if isinstance(m, PackedBitLinear):
            m.kernel = kernel
