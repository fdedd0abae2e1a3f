"""Where candidates run. The search only needs `slots`, `submit(request)` and `wait_any(handles)`.

`ThreadEvaluator` runs candidates in local threads (the core's default; the Prefect layer provides one
that submits Prefect tasks, and the deployments layer one that starts deployment runs on a GPU pool).
"""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from queue import Queue
from typing import Any, Callable, Protocol

from .fitness import crashed_result


class Evaluator(Protocol):
    slots: int

    def submit(self, request: dict[str, Any]) -> Any: ...

    def wait_any(self, handles: list[Any]) -> tuple[Any, dict[str, Any]]: ...


class ThreadEvaluator:
    """Local threads; with several GPUs each running candidate holds one device (`request["device"]`)."""

    def __init__(self, fn: Callable[[dict[str, Any]], dict[str, Any]], slots: int = 1, devices: list[str] | None = None):
        self.fn = fn
        self.slots = slots
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="candidate")
        self._devices: Queue[str | None] = Queue()
        for i in range(slots):
            self._devices.put(devices[i % len(devices)] if devices else None)

    def _run(self, request: dict[str, Any]) -> dict[str, Any]:
        device = self._devices.get()
        try:
            return self.fn({**request, "device": device} if device else request)
        finally:
            self._devices.put(device)

    def submit(self, request: dict[str, Any]) -> Future:
        return self._pool.submit(self._run, request)

    def wait_any(self, handles: list[Future]) -> tuple[Future, dict[str, Any]]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        h = next(h for h in handles if h in done)  # deterministic pick among those done
        try:
            return h, h.result()
        except Exception as exc:  # noqa: BLE001 - a lost candidate is scored worst, the search goes on
            return h, crashed_result(exc)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
