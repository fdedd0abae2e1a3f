"""GGUF's legacy block formats (llama.cpp's ggml-quants), quantized by the `gguf` package, as a codec:
the baselines a llama.cpp user would pick, and a plan rule like any other codec.

Blocks of 32 weights along a row, each with a float16 scale d (and a float16 minimum m for the `_1` types):
Q4_0 ŵ = d·(q − 8), q ∈ [0, 16): 18 bytes per block, 4.5 bpw; Q4_1 ŵ = d·q + m: 5.0 bpw; Q5_0 / Q5_1:
5.5 / 6.0 bpw; Q8_0 ŵ = d·q, q ∈ [−127, 127]: 8.5 bpw. The payload is the blocks byte for byte as a GGUF
file stores them, so the bits are exactly llama.cpp's. The k-quants (256-weight super-blocks) are not here:
the `gguf` package cannot quantize them, and 576-wide rows do not divide into 256 anyway.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import ConfigError
from .base import Codec, Encoded

TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
BLOCK = 32


class GGUFBlocks(Codec):
    name = "gguf"

    def __init__(self, type: str = "Q4_0"):
        if type not in TYPES:
            raise ConfigError(f"gguf type {type!r} is not one of {list(TYPES)} (the block formats the gguf "
                              "package quantizes)")
        self.type = type

    @staticmethod
    def _qtype(name: str):
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType[name]

    def encode(self, w: torch.Tensor, hessian: torch.Tensor | None = None) -> Encoded:
        from gguf import quants

        if w.shape[1] % BLOCK:
            raise ConfigError(f"gguf {self.type} needs rows that divide into {BLOCK}-weight blocks; this row has "
                              f"{w.shape[1]} weights")
        blocks = quants.quantize(w.detach().float().numpy(), self._qtype(self.type))
        return Encoded(self.name, tuple(w.shape), {"blocks": torch.from_numpy(np.ascontiguousarray(blocks))},
                       {"type": self.type}, widths={"blocks": (8, False)})

    def decode(self, enc: Encoded) -> torch.Tensor:
        from gguf import quants

        blocks = enc.payload["blocks"].to(torch.uint8).numpy()  # the type is the encoding's, not this instance's
        return torch.from_numpy(quants.dequantize(blocks, self._qtype(enc.params["type"])).astype(np.float32)).reshape(enc.shape)
