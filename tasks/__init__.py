"""Prefect tasks: one per pipeline stage, thin wrappers around `agent_forge_core` stage functions."""
from .stage_task import stage_task

STAGE_TASKS = {}


def task_for(stage: str):
    if stage not in STAGE_TASKS:
        STAGE_TASKS[stage] = stage_task(stage)
    return STAGE_TASKS[stage]


__all__ = ["stage_task", "task_for", "STAGE_TASKS"]
