"""Stage 0, `import`: the base model as the first checkpoint of the lineage, with its metrics.

Its key depends on the `model` section (source, dtype...), as every stage's key does, so every later
stage's key does too. What it refuses, before anything is published:
- remote code (`model.trust_remote_code=true`) unless this machine's own environment allows it
  (`AF_ALLOW_REMOTE_CODE=1`): a flow parameter from the UI or the API must not run code on a worker;
  and a model that needs its own modeling code (`auto_map` in its config) even then, since checkpoints
  never carry code;
- non-finite weights (a NaN or inf anywhere), which would only surface as NaN metrics and gate failures
  one stage later.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Iterator

import torch

from ..errors import ConfigError, ModelLoadError
from ..model_io import load_model, save_model
from ..stages.contract import Built, StageContext, StageSpec
from .settings import ImportSettings

ALLOW_REMOTE_CODE = "AF_ALLOW_REMOTE_CODE"


def check_remote_code(trust_remote_code: bool) -> None:
    if trust_remote_code and os.environ.get(ALLOW_REMOTE_CODE) != "1":
        raise ConfigError(
            f"model.trust_remote_code=true would run the model's own Python code on this machine; a setting (a flow "
            f"parameter from the UI or API included) cannot allow that: set {ALLOW_REMOTE_CODE}=1 in this machine's "
            "(the worker's) environment to allow it, or set model.trust_remote_code=false")


def check_finite(model, source: str) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ModelLoadError(f"{source!r}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); the model is "
                             "broken: re-download or re-export it")


def build(inputs: list[str], section: ImportSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    m = ctx.settings.model
    check_remote_code(m.trust_remote_code)
    ctx.progress(0.0, f"import: loading {m.source}")
    model, tok = load_model(
        m.source, gguf_file=m.gguf_file, dtype=m.dtype, device=str(ctx.device), trust_remote_code=m.trust_remote_code
    )
    check_finite(model, m.source)
    folder = save_model(model, tok, ctx.work_dir / f"import-{uuid.uuid4().hex}")
    if "auto_map" in json.loads((folder / "config.json").read_text()):
        shutil.rmtree(folder, ignore_errors=True)
        raise ModelLoadError(f"{m.source!r} needs its own modeling code (auto_map in its config); checkpoints never "
                             "carry code, so later stages could not load it: use a model whose architecture "
                             "transformers has built in")
    yield Built(variant="", folder=folder, parent="", info={"source": m.source, "parameters": model.num_parameters()},
                model=model, tokenizer=tok)


SPEC = StageSpec(
    name="import",
    version=1,
    takes="none",
    build=build,
    settings=ImportSettings,
    description="Load the base model (folder, GGUF, hub id or alias) and record its metrics.",
)
