"""Stage progress: a Prefect progress artifact per stage run; in a terminal a progress bar, elsewhere (CI logs,
nohup, a worker) a plain line at least every `line_every` seconds with the stage, its step and an ETA.

The artifact is updated at most every `every` seconds: every update is a write to the Prefect server's
database, which with SQLite competes with the UI's own writes (a locked database answers 503), so progress
is coarse on purpose."""
from __future__ import annotations

import os
import sys
import threading
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact


class StageProgress:
    """Callable `(fraction, message)`."""

    def __init__(self, stage: str, terminal: bool | None = None, every: float | None = None, line_every: float = 30.0,
                 out=None):
        self.stage = stage
        # AF_PROGRESS_ARTIFACT_S: a process-wide knob for operators (and bench/server_load.py)
        self.every = every if every is not None else float(os.environ.get("AF_PROGRESS_ARTIFACT_S", "15"))
        self.line_every = line_every
        self.started = time.monotonic()
        self.last = self.last_line = self.started
        self.out = out or sys.stderr
        self.artifact_id = create_progress_artifact(0.0, key=f"progress-{stage}", description=f"stage {stage}")
        self.bar = None
        self.state = (0.0, "starting")
        self._done = threading.Event()
        if terminal if terminal is not None else self.out.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=stage, unit="%", leave=True, file=self.out)
        else:
            print(f"[{stage}] started", file=self.out, flush=True)
            # a long step (an eval, a merge) reports nothing for minutes: the line comes from a heartbeat
            threading.Thread(target=self._heartbeat, daemon=True, name=f"progress-{stage}").start()

    def _heartbeat(self) -> None:
        while not self._done.wait(self.line_every / 6):
            if time.monotonic() - self.last_line >= self.line_every:
                self._line()

    def _line(self) -> None:
        self.last_line = time.monotonic()
        fraction, message = self.state
        print(f"[{self.stage}] {100 * fraction:.0f}% {message} (ETA {self.eta(fraction)})", file=self.out, flush=True)

    def eta(self, fraction: float) -> str:
        if fraction <= 0.01:
            return "?"
        left = (time.monotonic() - self.started) * (1 - fraction) / fraction
        return f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"

    def __call__(self, fraction: float, message: str) -> None:
        pct = max(0.0, min(100.0, 100.0 * fraction))
        now = time.monotonic()
        self.state = (pct / 100, message)
        if self.bar is not None:
            self.bar.n = round(pct, 1)
            self.bar.set_postfix_str(message[-60:], refresh=True)
        elif now - self.last_line >= self.line_every:
            self._line()
        if now - self.last >= self.every or fraction >= 1.0:
            self.last = now
            update_progress_artifact(self.artifact_id, pct, description=f"{self.stage}: {message}")

    def close(self) -> None:
        self._done.set()
        if self.bar is not None:
            self.bar.close()
        else:
            print(f"[{self.stage}] finished in {time.monotonic() - self.started:.0f} s", file=self.out, flush=True)
