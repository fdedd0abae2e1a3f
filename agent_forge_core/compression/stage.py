"""Stage 8, final compression: the input checkpoint as a compressed artifact (`compress.py`).

The runner evaluates the model *rebuilt from the artifact* and enforces the gates against the input.
Manifest info: bits per weight model-wide and over the coded tensors, bits per codec, the auto choices,
encode time per codec and the decode time (every tensor's codec/bits/error is in compression.json).
"""
from __future__ import annotations

import uuid
from typing import Iterator

from ..stages.contract import Built, StageContext, StageSpec
from .compress import compress_checkpoint
from .settings import CompressionSettings


def build(inputs: list[str], cfg: CompressionSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    (parent,) = inputs
    folder = ctx.work_dir / f"compression-{uuid.uuid4().hex}"
    info = compress_checkpoint(ctx.store.get(parent), cfg, folder, str(ctx.device), ctx.progress, ctx.log, parent)
    yield Built(variant="", folder=folder, parent=parent, info=info)  # evaluated as rebuilt from the artifact


SPEC = StageSpec(
    name="compression",
    version=1,
    takes="one",
    build=build,
    settings=CompressionSettings,
    description="Final compression: SeedLM / VPTQ / Hyper-Compression / RTN per tensor (plan or auto), "
                "an artifact that rebuilds the model.",
)
