"""The files of a checkpoint folder that are not weights: config, generation config, tokenizer, format
metadata (bitnet.json...) and what stages leave beside the model (merge recipe, history, plots).

Every format that rewrites the weights copies these from its input through `copy_side_files`, the one
place that decides what travels. Never copied: weights (the format writes its own), the object store's
bookkeeping, and executable code (a checkpoint's `*.py`, i.e. remote code, is never carried forward).
"""
from __future__ import annotations

import shutil
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt")
STORE_FILES = ("manifest.json", ".verified")
CODE_SUFFIXES = (".py", ".pyc", ".so")


def side_files(folder: str | Path, skip: tuple[str, ...] = ()) -> list[Path]:
    folder = Path(folder)
    return sorted(
        f for f in folder.iterdir()
        if f.is_file() and f.suffix not in WEIGHT_SUFFIXES + CODE_SUFFIXES and not f.name.endswith(".index.json")
        and f.name not in STORE_FILES + tuple(skip)
    )


def copy_side_files(src: str | Path, dst: str | Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy the side files of `src` into the folder `dst` (created if needed); returns their names."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for f in side_files(src, skip):
        shutil.copy2(f, dst / f.name)
        names.append(f.name)
    return names
