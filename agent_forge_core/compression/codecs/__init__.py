"""The codec registry: every codec class, by name (the registry imports its codecs, never the reverse)."""
from __future__ import annotations

from ...errors import ConfigError
from .base import Codec, Encoded
from .gguf_blocks import GGUFBlocks
from .gptq import GPTQ
from .hyper import HyperCompression
from .rtn import RTN
from .seedlm import SeedLM
from .vptq import VPTQ

CODECS: dict[str, type[Codec]] = {c.name: c for c in (SeedLM, VPTQ, HyperCompression, RTN, GPTQ, GGUFBlocks)}


def get_codec(name: str, **params) -> Codec:
    if name not in CODECS:
        raise ConfigError(f"unknown codec {name!r}; built: {sorted(CODECS)}")
    try:
        return CODECS[name](**params)
    except TypeError as e:
        raise ConfigError(f"codec {name}: {e}") from None


__all__ = ["CODECS", "Codec", "Encoded", "get_codec"]
