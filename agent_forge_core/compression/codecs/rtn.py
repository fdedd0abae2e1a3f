"""Round-to-nearest group quantization, the baseline every codec is compared with.

Per group of `group` consecutive weights along a row, b bits:
- symmetric: s = max|w| / (2^(b−1) − 1), q = clamp(round(w / s), −(2^(b−1) − 1), 2^(b−1) − 1), ŵ = q·s;
  a 16-bit scale per group: bpw = b + 16/group.
- asymmetric (`symmetric: false`, GGUF Q4_1's form): s = (max w − min w) / (2^b − 1), m = min w,
  q = clamp(round((w − m) / s), 0, 2^b − 1), ŵ = q·s + m; 16-bit scale and minimum: bpw = b + 32/group.
Scales (and minima) are rounded to float16 before q is computed, so q is exact for the stored grid.
"""
from __future__ import annotations

import torch

from ...errors import ConfigError
from .base import Codec, Encoded


class RTN(Codec):
    name = "rtn"

    def __init__(self, bits: int = 4, group: int = 64, symmetric: bool = True):
        if not 2 <= bits <= 8:
            raise ConfigError(f"{self.name} bits must be in 2..8, got {bits}")
        if group < 1:
            raise ConfigError(f"{self.name} group must be >= 1, got {group}")
        self.bits, self.group, self.symmetric = bits, group, symmetric

    def grid(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-group grid of w (rows, cols): {"scale"} or {"scale", "min"}, float16, shape (rows, groups, 1)."""
        rows, cols = w.shape
        if cols % self.group:
            raise ConfigError(f"{self.name} group {self.group} does not divide the row length {cols}")
        g = w.float().reshape(rows, cols // self.group, self.group)
        if self.symmetric:
            return {"scale": (g.abs().amax(-1, keepdim=True) / (2 ** (self.bits - 1) - 1)).to(torch.float16)}
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        return {"scale": ((hi - lo) / (2**self.bits - 1)).to(torch.float16), "min": lo.to(torch.float16)}

    def round(self, g: torch.Tensor, grid: dict[str, torch.Tensor]) -> torch.Tensor:
        """Codes of weights `g` (..., groups, group-or-1 columns) on `grid` (broadcast against g)."""
        scale = grid["scale"].float()
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        if self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            return torch.clamp(torch.round(g / safe), -qmax, qmax)
        return torch.clamp(torch.round((g - grid["min"].float()) / safe), 0, 2**self.bits - 1)

    def encoded(self, shape, q: torch.Tensor, grid: dict[str, torch.Tensor], **params) -> Encoded:
        return Encoded(self.name, tuple(shape), {"q": q.to(torch.int16), **grid},
                       {"bits": self.bits, "group": self.group, "symmetric": self.symmetric, **params},
                       widths={"q": (self.bits, self.symmetric)})

    def encode(self, w: torch.Tensor, hessian: torch.Tensor | None = None) -> Encoded:
        grid = self.grid(w)
        rows, cols = w.shape
        q = self.round(w.float().reshape(rows, cols // self.group, self.group), grid)
        return self.encoded(w.shape, q, grid)

    def decode(self, enc: Encoded) -> torch.Tensor:
        w = enc.payload["q"].float() * enc.payload["scale"].float()
        if "min" in enc.payload:
            w = w + enc.payload["min"].float()
        return w.reshape(enc.shape)
