"""Building a StageContext from settings (used by the Prefect tasks, the CLI and benchmarks)."""
from __future__ import annotations

import logging
from .fanout import FanoutFactory
from .model_io import resolve_device
from .scratch import scratch_dir
from .stages.contract import Progress, StageContext, StageSpec, no_progress
from .stages.registry import available, get_stage
from .store import CheckpointStore


def built_stage(name: str) -> StageSpec | None:
    return get_stage(name) if name in available() else None


def make_context(settings, log=None, progress: Progress | None = None, fanout: FanoutFactory | None = None) -> StageContext:
    work = scratch_dir(settings.work_dir)
    return StageContext(
        settings=settings,
        store=CheckpointStore.from_settings(settings.store),
        device=resolve_device(settings.device),
        log=log or logging.getLogger("agent_forge"),
        progress=progress or no_progress,
        work_dir=work,
        fanout=fanout,
        stages=built_stage,
    )
