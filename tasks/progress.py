"""Stage progress: a Prefect progress artifact per stage run and, in a terminal, a progress bar."""
from __future__ import annotations

import sys
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact


class StageProgress:
    """Callable `(fraction, message)`; updates the artifact at most every `every` seconds."""

    def __init__(self, stage: str, terminal: bool | None = None, every: float = 2.0):
        self.stage = stage
        self.every = every
        self.last = 0.0
        self.artifact_id = create_progress_artifact(0.0, key=f"progress-{stage}", description=f"stage {stage}")
        self.bar = None
        if terminal if terminal is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=stage, unit="%", leave=True, file=sys.stderr)

    def __call__(self, fraction: float, message: str) -> None:
        pct = max(0.0, min(100.0, 100.0 * fraction))
        if self.bar is not None:
            self.bar.n = round(pct, 1)
            self.bar.set_postfix_str(message[-60:], refresh=True)
        now = time.monotonic()
        if now - self.last >= self.every or fraction >= 1.0:
            self.last = now
            update_progress_artifact(self.artifact_id, pct, description=f"{self.stage}: {message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
