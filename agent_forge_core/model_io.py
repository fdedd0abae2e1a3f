"""Loading and saving models, whatever their format: a small dispatcher over `formats`.

Sources: a built-in alias (see `aliases.py`), a local checkpoint folder in any format (HF safetensors,
BitNet packed, compressed artifact), a GGUF file (dequantized on load) or a hub id (when a hub is
reachable). Weights are never read with pickle.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import torch

from . import formats
from .aliases import ALIASES, ensure_alias

# transformers builds models under process-global patches (meta-device init); two threads loading at
# once corrupt each other ("Cannot copy out of meta tensor"). Loading is short: merging, training and
# evaluating still run in parallel.
_LOAD_LOCK = threading.Lock()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    source: str,
    *,
    gguf_file: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """(model, tokenizer) from an alias, a checkpoint folder of any format, a .gguf file or a hub id."""
    folder = str(ensure_alias(source)) if source in ALIASES else os.path.expanduser(source)
    fmt = formats.detect(folder)
    with _LOAD_LOCK:
        return fmt.load(folder, device=str(resolve_device(device)), gguf_file=gguf_file, dtype=dtype,
                        trust_remote_code=trust_remote_code)


def save_model(model, tokenizer, folder: str | os.PathLike) -> Path:
    """A float model as a plain HF folder (weights, config, generation config, tokenizer)."""
    return formats.hf.save(model, tokenizer, folder)


def export_hf(folder: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write checkpoint `folder` as a folder plain `transformers` loads; returns what it holds."""
    fmt = formats.detect(folder)
    fmt.export_hf(folder, out)
    return fmt.EXPORT_NOTE


def export_gguf(folder: str | os.PathLike, out_file: str | os.PathLike, weight_type: str = "Q8_0",
                name: str = "") -> dict:
    """Write checkpoint `folder` (any format, decoded to float first) as a GGUF file llama.cpp runs; returns
    what `gguf_export.write_gguf` wrote."""
    from .gguf_export import check_weight_type, write_gguf

    check_weight_type(weight_type)  # before the decode, which may take minutes
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "hf"
        formats.detect(folder).export_hf(folder, plain)
        with _LOAD_LOCK:
            model, tok = formats.hf.load(str(plain), device="cpu", dtype="float32")
    return write_gguf(model, tok, out_file, weight_type, name)
