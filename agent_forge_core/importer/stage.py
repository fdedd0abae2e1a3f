"""Stage 0, `import`: the base model as the first checkpoint of the lineage, with its metrics.

Its key depends on the `model` section (source, dtype...), as every stage's key does, so every later
stage's key does too.
"""
from __future__ import annotations

import uuid
from typing import Iterator

from ..model_io import load_model, save_model
from ..stages.contract import Built, StageContext, StageSpec
from .settings import ImportSettings


def build(inputs: list[str], section: ImportSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    m = ctx.settings.model
    ctx.progress(0.0, f"import: loading {m.source}")
    model, tok = load_model(
        m.source, gguf_file=m.gguf_file, dtype=m.dtype, device=str(ctx.device), trust_remote_code=m.trust_remote_code
    )
    folder = save_model(model, tok, ctx.work_dir / f"import-{uuid.uuid4().hex}")
    yield Built(variant="", folder=folder, parent="", info={"source": m.source}, model=model, tokenizer=tok)


SPEC = StageSpec(
    name="import",
    version=1,
    takes="none",
    build=build,
    settings=ImportSettings,
    description="Load the base model (folder, GGUF, hub id or alias) and record its metrics.",
)
