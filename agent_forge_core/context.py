"""Building a StageContext from settings (used by the Prefect tasks, the CLI and benchmarks)."""
from __future__ import annotations

import logging
from pathlib import Path

from .fanout import FanoutFactory
from .model_io import resolve_device
from .stages.contract import Progress, StageContext, no_progress
from .store import CheckpointStore


def make_context(settings, log=None, progress: Progress | None = None, fanout: FanoutFactory | None = None) -> StageContext:
    work = Path(settings.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    return StageContext(
        settings=settings,
        store=CheckpointStore.from_settings(settings.store),
        device=resolve_device(settings.device),
        log=log or logging.getLogger("agent_forge"),
        progress=progress or no_progress,
        work_dir=work,
        fanout=fanout,
    )
