"""The files of a checkpoint folder that are not weights: config, generation config, tokenizer, format
metadata (bitnet.json...) and what stages leave beside the model (merge recipe, history, plots).

Every format that rewrites the weights copies these from its input through `copy_side_files`, the one
place that decides what travels. Never copied: weights (the format writes its own), the object store's
bookkeeping, and executable code (a checkpoint's `*.py`, i.e. remote code, is never carried forward).
Sidecars are the exception to the first: a stage's extra state stored as safetensors (Quiet-STaR's head
in `quietstar.safetensors`) travels when the folder's `sidecars.json` lists it, and the stage runner
carries every input's sidecars into a stage's output (`carry_sidecars`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt")
STORE_FILES = ("manifest.json", ".verified")
SIDECARS_FILE = "sidecars.json"
CODE_SUFFIXES = (".py", ".pyc", ".so")


def sidecars(folder: str | Path) -> list[str]:
    """Names of the stage state files the folder's `sidecars.json` lists."""
    path = Path(folder) / SIDECARS_FILE
    return json.loads(path.read_text())["files"] if path.is_file() else []


def add_sidecars(folder: str | Path, names: list[str]) -> None:
    """List `names` in the folder's `sidecars.json` (later stages carry them forward)."""
    known = sidecars(folder)
    (Path(folder) / SIDECARS_FILE).write_text(json.dumps({"files": known + [n for n in names if n not in known]}))


def side_files(folder: str | Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """The folder's side files, and the sidecars it lists in subfolders (the experts' `experts/<domain>...`)."""
    folder = Path(folder)
    listed = set(sidecars(folder))
    top = [f for f in folder.iterdir()
           if f.is_file() and (f.name in listed or f.suffix not in WEIGHT_SUFFIXES + CODE_SUFFIXES)
           and not f.name.endswith(".index.json") and f.name not in STORE_FILES + tuple(skip)]
    nested = [folder / n for n in listed if "/" in n and (folder / n).is_file()]
    return sorted(top + nested)


def copy_side_files(src: str | Path, dst: str | Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy the side files of `src` into the folder `dst` (created if needed); returns their relative names."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for f in side_files(src, skip):
        rel = f.relative_to(src)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst / rel)
        names.append(str(rel))
    return names


def carry_sidecars(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the sidecars `src` lists (and their list) into `dst` where `dst` lacks them: what a stage's
    output inherits from its input (a BitNet model keeps its Quiet-STaR head)."""
    names = [n for n in sidecars(src) if not (Path(dst) / n).exists()]
    for n in names:
        (Path(dst) / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(src) / n, Path(dst) / n)
    if names:
        add_sidecars(dst, names)
    return names
