"""Prefect tasks: one per pipeline stage, thin wrappers around `agent_forge_core` stage functions."""
from .stage_task import make_stage_task

STAGE_TASKS: dict = {}


def task_for(stage: str):
    """The Prefect task of `stage` (built once per process)."""
    if stage not in STAGE_TASKS:
        STAGE_TASKS[stage] = make_stage_task(stage)
    return STAGE_TASKS[stage]


__all__ = ["make_stage_task", "task_for", "STAGE_TASKS"]
