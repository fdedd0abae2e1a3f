"""Final compression (stage 8): per-tensor codecs with exact bit accounting (`codecs/`), the plan and
`auto` selection (`plan.py`), calibration Hessians (`calibration.py`) and the artifact with its loader
(`artifact.py`). The stage itself is `stages/compression.py`.
"""
from .codecs import Codec, Encoded, get_codec

__all__ = ["Codec", "Encoded", "get_codec"]
