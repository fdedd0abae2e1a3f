"""On-disk checkpoint formats, one module each:

- `hf`: a plain Hugging Face folder (safetensors), and the import of GGUF files and hub ids;
- `bitnet`: BitNet b1.58 packed ternary codes (`bitnet.json`);
- `compressed`: the final compression artifact (`compression.json`), which may carry a BitNet base.

Each module has `NAME`, `detect(folder)`, `load(folder, device, **options) -> (model, tokenizer)`,
`export_hf(folder, out)` (a folder plain `transformers` loads, with `EXPORT_NOTE` saying what it holds)
and its own writer. A folder belongs to the first format whose `detect` accepts it, so the more specific
formats come first (a compressed artifact of a BitNet model also holds `bitnet.json`). A new format is one
module plus its place in `FORMATS`; the files every format carries over (config, tokenizer...) are copied
by `files.copy_side_files`.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from . import bitnet, compressed, hf

FORMATS: tuple[ModuleType, ...] = (compressed, bitnet, hf)


def detect(folder: str | Path) -> ModuleType:
    """The format module that owns `folder` (`hf` when no other claims it)."""
    return next(f for f in FORMATS if f.detect(folder))
