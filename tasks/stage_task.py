"""The Prefect task around a stage.

- Retries only transient failures (network/object store); a failed gate, a bad config or a corrupted
  checkpoint fails at once.
- Cache key: hash of (stage, input checkpoint keys, stage-config hash, code version) -- which is exactly
  what the output checkpoint keys are derived from -- combined with TASK_SOURCE. Never INPUTS alone.
- Results (small JSON: output keys and metrics, never weights) persist in the same object store as the
  checkpoints, so a rerun in a new flow run, or on another machine, hits the cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from agent_forge_core.config import ForgeSettings
from agent_forge_core.context import make_context
from agent_forge_core.errors import CheckpointCorrupted, ConfigError, GateFailed, ModelLoadError, TransientError
from agent_forge_core.stages.registry import get_stage
from agent_forge_core.stages.runner import output_keys, run_stage

from .progress import StageProgress

NEVER_RETRY = (GateFailed, ConfigError, CheckpointCorrupted, ModelLoadError, FileNotFoundError, PermissionError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, NEVER_RETRY):
        return False
    return isinstance(exc, (TransientError, ConnectionError, TimeoutError, OSError))


def retry_condition(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classified below
        return is_transient(exc)
    return False


def stage_cache_key(stage: str, inputs: list[str], settings: ForgeSettings) -> str:
    ctx = make_context(settings)
    keys = output_keys(get_stage(stage), list(inputs), ctx)
    blob = "\n".join([stage, *inputs, *sorted(keys.values())])
    return hashlib.sha256(blob.encode()).hexdigest()


def _cache_key_fn(task_ctx, params: dict[str, Any]) -> str:
    return stage_cache_key(params["stage"], params["inputs"], params["settings"])


def run_stage_body(stage: str, inputs: list[str], settings: ForgeSettings) -> dict[str, Any]:
    """The task body: run the stage through the core runner; returns JSON-able keys and metrics."""
    log = get_run_logger()
    progress = StageProgress(stage)
    try:
        ctx = make_context(settings, log=log, progress=progress)
        if stage == "evomerge" and settings.evomerge.executor == "deployment":
            from .remote_candidates import deployment_evaluator

            ctx.candidate_evaluator = deployment_evaluator(settings, log)
        elif stage == "evomerge":
            from .evomerge import prefect_evaluator

            ctx.candidate_evaluator = prefect_evaluator(settings)
        log.info("stage %s on %s (device %s)", stage, inputs or settings.model.source, ctx.device)
        result = run_stage(get_stage(stage), list(inputs), ctx)
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
