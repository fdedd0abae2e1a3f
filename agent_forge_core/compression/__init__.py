"""Final compression (stage 8): per-tensor codecs with exact bit accounting (`codecs/`), the plan and
`auto` selection (`plan.py`), calibration Hessians (`calibration.py`) and the whole checkpoint into one
artifact (`compress.py`; the artifact format and its loader: `formats/compressed.py`). Settings:
`settings.py`; the stage adapter: `stage.py`.
"""
from .codecs import Codec, Encoded, get_codec

__all__ = ["Codec", "Encoded", "get_codec"]
