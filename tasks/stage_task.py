"""The Prefect task around a stage.

- Retries only transient failures (`retry.py`).
- Cache key: hash of (stage, input checkpoint keys, output checkpoint keys) -- the keys are derived from
  the stage's config, its inputs and the code version (`stages/plan.py`), computed once per run and passed
  in -- combined with TASK_SOURCE. Never INPUTS alone.
- Results (small JSON: output keys and metrics, never weights) persist in the same object store as the
  checkpoints, so a rerun in a new flow run, or on another machine, hits the cache.
- The stage's fan-out (`ctx.fanout`) runs its jobs as Prefect tasks or deployment runs (`fanout.py`).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from agent_forge_core.config import ForgeSettings
from agent_forge_core.context import make_context
from agent_forge_core.stages.plan import PlannedStage
from agent_forge_core.stages.registry import get_stage
from agent_forge_core.stages.runner import run_stage

from .fanout import prefect_fanout
from .progress import StageProgress
from .retry import retry_condition


def stage_cache_key(planned: dict[str, Any]) -> str:
    blob = "\n".join([planned["name"], *planned["inputs"], *sorted(planned["keys"].values())])
    return hashlib.sha256(blob.encode()).hexdigest()


def _cache_key_fn(task_ctx, params: dict[str, Any]) -> str:
    return stage_cache_key(params["planned"])


def run_stage_body(planned: dict[str, Any], settings: ForgeSettings) -> dict[str, Any]:
    """The task body: run the planned stage through the core runner; returns JSON-able keys and metrics.
    `planned` is a `PlannedStage` as a dict (task parameters stay plain JSON)."""
    stage = PlannedStage(**planned)
    log = get_run_logger()
    progress = StageProgress(stage.name)
    try:
        ctx = make_context(settings, log=log, progress=progress, fanout=prefect_fanout(settings, log))
        log.info("stage %s on %s (device %s)", stage.name, stage.inputs or settings.model.source, ctx.device)
        result = run_stage(get_stage(stage.name), stage, ctx)
    finally:
        progress.close()
    return dataclasses.asdict(result)


def make_stage_task(stage: str):
    """A Prefect task running `stage`; results persisted to the configured store."""
    return task(
        run_stage_body,
        name=f"stage-{stage}",
        task_run_name=f"{stage}",
        retries=2,
        retry_delay_seconds=5,
        retry_condition_fn=retry_condition,
        cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_cache_key_fn),
        persist_result=True,
        result_serializer="json",
        cache_result_in_memory=False,
        tags=["agent-forge", f"stage:{stage}"],
    )
