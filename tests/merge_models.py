"""Variants of a saved model folder for merge tests: same tokenizer/config, perturbed weights."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def variant(base: Path, out: Path, seed: int, scale: float = 0.02, edit=None) -> Path:
    shutil.copytree(base, out, dirs_exist_ok=True)
    sd = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    sd = {k: (v + scale * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in sd.items()}
    if edit:
        sd = edit(sd)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def variants(base: Path, root: Path, n: int = 3) -> list[Path]:
    return [variant(base, root / f"v{i}", seed=100 + i) for i in range(n)]
