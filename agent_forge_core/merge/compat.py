"""Refusing merges of models that cannot be merged: other architectures, shapes, or tokenizers."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelLoadError
from .safetensors_io import LazyCheckpoint


def read_config(folder: Path) -> dict:
    p = folder / "config.json"
    if not p.is_file():
        raise ModelLoadError(f"{folder}: no config.json; merge inputs must be HF model folders")
    return json.loads(p.read_text())


def check_architectures(configs: dict[str, dict]) -> None:
    ref_name, ref = next(iter(configs.items()))
    for name, cfg in configs.items():
        for field in ("model_type", "architectures", "hidden_size", "vocab_size"):
            if cfg.get(field) != ref.get(field):
                raise ModelLoadError(
                    f"cannot merge {name} with {ref_name}: config {field} is {cfg.get(field)!r} vs "
                    f"{ref.get(field)!r}; merged models must share an architecture"
                )


def check_tensors(ref_name: str, ref: LazyCheckpoint, name: str, other: LazyCheckpoint, wanted: list[str]) -> None:
    for t in wanted:
        if t not in other.infos:
            raise ModelLoadError(f"cannot merge: {name} has no tensor {t!r} (present in {ref_name})")
        a, b = ref.infos[t].shape, other.infos[t].shape
        if a != b:
            raise ModelLoadError(f"cannot merge: tensor {t!r} has shape {list(b)} in {name} but {list(a)} in {ref_name}")


def _vocab(folder: Path) -> dict | None:
    p = folder / "tokenizer.json"
    if not p.is_file():
        return None
    data = json.loads(p.read_text())
    vocab = dict(data.get("model", {}).get("vocab") or {})
    for tok in data.get("added_tokens", []):
        vocab[tok["content"]] = tok["id"]
    return vocab


def check_tokenizers(folders: dict[str, Path]) -> None:
    files = {n: f / "tokenizer.json" for n, f in folders.items()}
    raw = {n: p.read_bytes() for n, p in files.items() if p.is_file()}
    if len(set(raw.values())) <= 1:  # byte-identical (the common case): parsing MBs of JSON would say the same
        return
    vocabs = {n: _vocab(f) for n, f in folders.items()}
    known = {n: v for n, v in vocabs.items() if v is not None}
    if len(known) < 2:
        return
    ref_name, ref = next(iter(known.items()))
    for name, v in known.items():
        if v != ref:
            diff = sorted(set(v.items()) ^ set(ref.items()))[:3]
            raise ModelLoadError(
                f"cannot merge {name} with {ref_name}: their tokenizers differ ({len(v)} vs {len(ref)} tokens; "
                f"e.g. {diff}); embeddings would be averaged across different tokens"
            )
