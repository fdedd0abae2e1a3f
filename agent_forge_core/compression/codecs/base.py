"""The codec interface: encode a 2-D weight matrix into payload tensors, decode it back, and account
every bit the payload needs -- exactly what the artifact stores.

Integer payloads declare a bit width (`Encoded.widths`: name -> (bits, signed)) and are stored packed
(`compression/bitpack.py`); float payloads (scales, codebooks) are stored in their dtype. Scalars a
codec keeps in `params` and counts (e.g. SeedLM's exponent window) are `extra_bits`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..bitpack import pack, unpack


@dataclass
class Encoded:
    codec: str
    shape: tuple[int, ...]
    payload: dict[str, torch.Tensor]
    params: dict[str, Any] = field(default_factory=dict)
    widths: dict[str, tuple[int, bool]] = field(default_factory=dict)  # integer payloads: (bits, signed)
    extra_bits: int = 0

    def field_bits(self, name: str) -> int:
        t = self.payload[name]
        if name in self.widths:
            return t.numel() * self.widths[name][0]
        if not t.is_floating_point():
            raise TypeError(f"integer payload {name!r} of {self.codec} has no declared bit width")
        return t.numel() * t.element_size() * 8

    @property
    def bits(self) -> int:
        """Exact payload bits (indices, scales, codebooks, seeds, permutations...)."""
        return sum(self.field_bits(n) for n in self.payload) + self.extra_bits

    @property
    def bits_per_weight(self) -> float:
        return self.bits / math.prod(self.shape)

    def packed(self) -> dict[str, torch.Tensor]:
        """Storage form: integer fields bit-packed into uint8, floats as they are."""
        out = {}
        for name, t in self.payload.items():
            if name in self.widths:
                width, signed = self.widths[name]
                out[name] = pack(t, width, signed)
            else:
                out[name] = t.contiguous()
        return out

    @classmethod
    def from_packed(cls, codec: str, shape, stored: dict[str, torch.Tensor], params: dict[str, Any],
                    widths: dict[str, tuple[int, bool]], shapes: dict[str, list[int]], extra_bits: int = 0) -> "Encoded":
        payload = {}
        for name, t in stored.items():
            if name in widths:
                width, signed = widths[name]
                n = math.prod(shapes[name])
                payload[name] = unpack(t, width, n, signed).reshape(shapes[name])
            else:
                payload[name] = t
        return cls(codec, tuple(shape), payload, params, {k: tuple(v) for k, v in widths.items()}, extra_bits)


class Codec:
    name: ClassVar[str]
    uses_hessian: ClassVar[bool] = False
    # payload fields (name prefixes) of float values that end-to-end fine-tuning may tune, codes fixed
    trainable: ClassVar[tuple[str, ...]] = ()

    def encode(self, w: torch.Tensor, hessian: torch.Tensor | None = None) -> Encoded:
        raise NotImplementedError

    def decode(self, enc: Encoded) -> torch.Tensor:
        raise NotImplementedError
