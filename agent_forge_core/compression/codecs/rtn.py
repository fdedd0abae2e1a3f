"""Round-to-nearest group quantization, the baseline every codec is compared with.

Per group of `group` consecutive weights along a row: scale s = max|w| / (2^(b−1) − 1),
q = clamp(round(w / s), −(2^(b−1) − 1), 2^(b−1) − 1) (symmetric), ŵ = q·s. Bits: b per weight plus a
16-bit scale per group, so bpw = b + 16/group.
"""
from __future__ import annotations

import torch

from ...errors import ConfigError
from .base import Codec, Encoded


class RTN(Codec):
    name = "rtn"

    def __init__(self, bits: int = 4, group: int = 64):
        if not 2 <= bits <= 8:
            raise ConfigError(f"rtn bits must be in 2..8, got {bits}")
        if group < 1:
            raise ConfigError(f"rtn group must be >= 1, got {group}")
        self.bits, self.group = bits, group

    def encode(self, w: torch.Tensor, hessian: torch.Tensor | None = None) -> Encoded:
        rows, cols = w.shape
        if cols % self.group:
            raise ConfigError(f"rtn group {self.group} does not divide the row length {cols}")
        g = w.float().reshape(rows, cols // self.group, self.group)
        qmax = 2 ** (self.bits - 1) - 1
        scale = (g.abs().amax(-1, keepdim=True) / qmax).to(torch.float16)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()
        q = torch.clamp(torch.round(g / safe), -qmax, qmax).to(torch.int8)
        return Encoded(self.name, tuple(w.shape), {"q": q, "scale": scale}, {"bits": self.bits, "group": self.group},
                       widths={"q": (self.bits, True)})

    def decode(self, enc: Encoded) -> torch.Tensor:
        return (enc.payload["q"].float() * enc.payload["scale"].float()).reshape(enc.shape)
