"""The Prefect task around a stage.

- Retries only transient failures (`retry.py`).
- Caching is the checkpoint store itself: output keys are derived from the stage's config, its inputs and
  the code version (`stages/plan.py`), so a stage whose outputs are all stored (and verify) builds nothing;
  its result is read back from the checkpoints' JSON manifests and its task run ends in a `Cached` state.
  Prefect persists no result record: a record in a shared bucket that declared another serializer
  (pickle) would run code on every machine that reads it, so none is ever read.
- The stage's fan-out (`ctx.fanout`) runs its jobs as Prefect tasks or deployment runs (`fanout.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from agent_forge_core.config import ForgeSettings
from agent_forge_core.context import make_context
from agent_forge_core.stages.plan import PlannedStage
from agent_forge_core.stages.registry import get_stage
from agent_forge_core.stages.runner import run_stage

from .fanout import prefect_fanout
from .progress import StageProgress
from .retry import retry_condition


def run_stage_body(planned: dict[str, Any], settings: ForgeSettings):
    """The task body: run the planned stage through the core runner; returns JSON-able keys and metrics
    (in a `Cached` state when every output was already stored). `planned` is a `PlannedStage` as a dict
    (task parameters stay plain JSON)."""
    stage = PlannedStage(**planned)
    log = get_run_logger()
    progress = StageProgress(stage.name)
    try:
        ctx = make_context(settings, log=log, progress=progress, fanout=prefect_fanout(settings, log))
        log.info("stage %s on %s (device %s)", stage.name, stage.inputs or settings.model.source, ctx.device)
        result = run_stage(get_stage(stage.name), stage, ctx)
    finally:
        progress.close()
    data = dataclasses.asdict(result)
    if result.reused:
        return Completed(data=data, name="Cached", message="every output checkpoint is in the store")
    return data


def make_stage_task(stage: str):
    """A Prefect task running `stage` (no Prefect result persistence: the checkpoints are the cache)."""
    return task(
        run_stage_body,
        name=f"stage-{stage}",
        task_run_name=f"{stage}",
        retries=2,
        retry_delay_seconds=5,
        retry_condition_fn=retry_condition,
        cache_policy=NO_CACHE,
        persist_result=False,
        tags=["agent-forge", f"stage:{stage}"],
    )
