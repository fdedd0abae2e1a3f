"""The stage contract.

A stage is a `StageSpec`: a name, a version, its settings class and a plain function
`build(inputs, section, ctx, keys)` that takes the input checkpoint keys, its config section, a context
and `keys` ({variant: output checkpoint key} of the outputs still to build), and yields one `Built` model
per variant. The runner (`runner.run_stage`) derives every output key before any work, skips variants
already in the store, evaluates each built model (the suite, or the stage's own `evaluate` hook), enforces
the stage's gates against its input, and only then publishes the checkpoint. A stage that produces
several checkpoints (Cognate) declares its variant names up front; one that produces a single checkpoint
has the single variant "". A stage may keep resumable state under its own output key (EvoMerge's search
history), fan independent jobs out with `ctx.fanout`, and describe Prefect artifacts with `artifacts`.

This module imports no stage and not the assembled settings (`config.py` builds those from the stage
registry), so stages can import it without an import circle.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch

from ..fanout import FanoutFactory, Job, thread_fanout
from ..settings_base import Section, StageSection
from ..store import CheckpointStore

Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    return None


def no_stages(name: str) -> "StageSpec | None":
    return None


@dataclass
class StageContext:
    settings: Any  # the run's ForgeSettings
    store: CheckpointStore
    device: torch.device
    log: logging.Logger | logging.LoggerAdapter
    progress: Progress = no_progress
    work_dir: Path = Path(".forge/work")  # this process's scratch folder (`scratch.py`)
    # (job, runtime) -> Pool: how a stage's jobs run in parallel. Threads by default; the Prefect layer
    # supplies Prefect tasks or deployment runs on a work pool.
    fanout: FanoutFactory | None = None
    # stage name -> its StageSpec (None where not built): how a stage reads another's hooks (`traffic`), since
    # stages never import the registry. `make_context` supplies the registry's; the default knows none.
    stages: Callable[[str], "StageSpec | None"] = no_stages

    def __post_init__(self) -> None:
        if self.fanout is None:
            self.fanout = thread_fanout(self.settings)


@dataclass
class Built:
    """A model a stage has built, not yet evaluated or published."""

    variant: str
    folder: Path  # a checkpoint folder in any format `formats` detects (HF, BitNet packed, compressed...)
    parent: str  # the input checkpoint its gates compare against
    info: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # optional in-memory model/tokenizer, saves reloading for evaluation
    tokenizer: Any = None


@dataclass(frozen=True)
class Artifact:
    """A Prefect artifact described without Prefect: a table (list of row dicts) or Markdown text."""

    kind: Literal["table", "markdown"]
    key: str
    data: Any
    description: str = ""


BuildFn = Callable[[list[str], Section, StageContext, dict[str, str]], Iterator[Built]]
# (model, tokenizer, eval settings, folder of the built checkpoint) -> metrics
EvaluateFn = Callable[[Any, Any, Any, Path], dict[str, float]]
# (model, tokenizer, checkpoint folder, the run's settings, scratch folder) -> {capability: value}
AgentProbeFn = Callable[[Any, Any, Path, Any, Path], dict[str, float]]
# (model, tokenizer, checkpoint folder, the run's settings, scratch folder, n) -> token sequences
TrafficFn = Callable[[Any, Any, Path, Any, Path, int], list[list[int]]]


def _single(section: Section) -> list[str]:
    return [""]


@dataclass(frozen=True)
class StageSpec:
    name: str
    version: int  # bump when the algorithm changes: part of every output key
    takes: Literal["none", "one", "many"]
    build: BuildFn
    settings: type[StageSection] = StageSection  # the stage's config section (`<name>:` in YAML)
    variants: Callable[[Section], list[str]] = _single
    evaluate: EvaluateFn | None = None  # None: the eval suite (`evals.suite.evaluate`)
    artifacts: Callable[[CheckpointStore, str], list[Artifact]] | None = None  # shown for each output key
    # (section, the built model's info) -> what to change when its gates fail (None: the generic advice)
    gate_advice: Callable[[Section, dict[str, Any]], str] | None = None
    jobs: tuple[Job, ...] = ()  # functions its fan-out runs (deployment runs look them up by name)
    # What the stage gave the agent (tool use, dispatch...), measured again on a later checkpoint of its lineage
    # that still carries it: the final agent (`final_agent.py`). The stage records the same names, measured on
    # its own output, in its manifest's info["agent"].
    agent_probe: AgentProbeFn | None = None
    # What the agent reads and writes in those capabilities, about `n` sequences per capability (the model's own
    # answers with its runtime in the loop) on a later checkpoint that carries them: compression calibrates on it.
    traffic: TrafficFn | None = None
    description: str = ""


@dataclass
class StageResult:
    stage: str
    outputs: list[str]
    metrics: dict[str, dict[str, float]]
    reused: bool = False
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
