"""The codec interface: encode a 2-D weight matrix into integer/float payload tensors, decode it back,
and account every bit the payload needs (what a serialized artifact must occupy)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...errors import ConfigError


@dataclass
class Encoded:
    codec: str
    shape: tuple[int, ...]
    payload: dict[str, torch.Tensor]  # what is stored (packed where the codec packs)
    params: dict[str, Any] = field(default_factory=dict)
    bits: int = 0  # exact payload bits, including scales/exponents/codebooks/seeds

    @property
    def bits_per_weight(self) -> float:
        n = 1
        for d in self.shape:
            n *= d
        return self.bits / n


class Codec:
    name: ClassVar[str]

    def encode(self, w: torch.Tensor) -> Encoded:
        raise NotImplementedError

    def decode(self, enc: Encoded) -> torch.Tensor:
        raise NotImplementedError


CODECS: dict[str, type] = {}


def register(cls):
    CODECS[cls.name] = cls
    return cls


def get_codec(name: str, **params) -> Codec:
    from . import rtn, seedlm  # noqa: F401

    if name not in CODECS:
        raise ConfigError(f"unknown codec {name!r}; built: {sorted(CODECS)}")
    return CODECS[name](**params)
