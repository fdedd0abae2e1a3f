from .base import Codec, Encoded, get_codec

__all__ = ["Codec", "Encoded", "get_codec"]
