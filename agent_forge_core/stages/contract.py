"""The stage contract.

A stage is a plain function: `build(inputs, section, ctx, variants)` takes input checkpoint keys, its
config section and a context, and yields one `Built` model per requested output variant. The runner
(`runner.run_stage`) derives each output's key before any work, skips variants already in the store,
evaluates every built model with the eval suite, enforces the stage's gates against its input, and only
then publishes the checkpoint. A stage that produces several checkpoints (Cognate) declares its variant
names up front; one that produces a single checkpoint has the single variant "".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch

from ..config import ForgeSettings, Section
from ..store import CheckpointStore

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass
class StageContext:
    settings: ForgeSettings
    store: CheckpointStore
    device: torch.device
    log: logging.Logger | logging.LoggerAdapter
    progress: Progress = _no_progress
    work_dir: Path = Path(".forge/work")
    # How EvoMerge runs its candidates: (fn, slots) -> Evaluator. None: local threads. The Prefect
    # layer supplies mapped Prefect tasks; the deployments layer, runs on a GPU work pool.
    candidate_evaluator: Callable[..., Any] | None = None


@dataclass
class Built:
    """A model a stage has built, not yet evaluated or published."""

    variant: str
    folder: Path  # a saved HF folder (model_io.save_model)
    parent: str  # the input checkpoint its gates compare against
    info: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # optional in-memory model/tokenizer, saves reloading for evaluation
    tokenizer: Any = None


BuildFn = Callable[[list[str], Section, StageContext, list[str]], Iterator[Built]]


@dataclass(frozen=True)
class StageSpec:
    name: str
    version: int  # bump when the algorithm changes: part of every output key
    takes: Literal["none", "one", "many"]
    build: BuildFn
    variants: Callable[[Section], list[str]] = lambda section: [""]
    hashed_config: Callable[[ForgeSettings], Any] | None = None  # what of the config shapes the output
    description: str = ""


@dataclass
class StageResult:
    stage: str
    outputs: list[str]
    metrics: dict[str, dict[str, float]]
    reused: bool = False
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
