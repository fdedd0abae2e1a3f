"""Fan-out: a stage's independent jobs (EvoMerge candidates; next, Quiet-STaR rollouts, loop sub-phases,
design searches) run in parallel, locally or on a work pool, with results that survive a crash.

A `Job` is a plain function `fn(settings, request) -> result` over small JSON (checkpoint keys, recipes,
seeds: never weights), so it can run in a thread, a Prefect task or a deployment run on another machine.
`run_job` is what every executor calls: it returns the stored result of an identical request if there is
one, else runs the job and stores its result at `job.result_path(request)` in the object store (so a
resumed stage never runs a finished job twice, and a deployment run hands its result back through the
store: nothing heavy travels through Prefect).

A `Pool` keeps `slots` jobs in flight: `submit(request)` returns a handle at once, `wait_any(handles)`
returns the first finished one with its result; a job whose run was lost for good (retries spent) comes
back as `job.lost(exc)`. `StageContext.fanout(job, runtime)` makes one: `ThreadPool` here (no Prefect);
the Prefect layer (`tasks/fanout.py`) supplies Prefect tasks or deployment runs instead, chosen by the
stage's `runtime.executor`.
"""
from __future__ import annotations

import json
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from queue import Queue
from typing import Any, Callable, Iterable, Iterator, Protocol

from .settings_base import FanoutRuntime
from .store import CheckpointStore

Request = dict[str, Any]
Result = dict[str, Any]


@dataclass(frozen=True)
class Job:
    name: str  # unique, "<stage>.<job>": how a deployment run finds the function
    fn: Callable[[Any, Request], Result]  # (settings, request) -> JSON-able result; settings.device says where
    result_path: Callable[[Request], str]  # where in the store its result is kept
    lost: Callable[[BaseException], Result]  # the result of a job whose run was lost for good
    label: str = "job"  # run names: f"{label}-{request['id']}" (a request's own "label" wins)
    tag: str = ""  # Prefect tag of its runs (operators can put a tag concurrency limit on it)

    def run_name(self, request: Request) -> str:
        return f"{request.get('label', self.label)}-{request['id']}"


def run_job(job: Job, settings, request: Request) -> Result:
    """The job's result: the stored one of an identical request, else computed and stored."""
    store = CheckpointStore.from_settings(settings.store)
    stored = stored_result(job, store, request)
    if stored is not None:
        return stored
    result = job.fn(settings, request)
    store.write_file(job.result_path(request), json.dumps({"request": request, "result": result}, indent=1).encode())
    return result


def stored_result(job: Job, store: CheckpointStore, request: Request) -> Result | None:
    """The stored result of exactly this request, if a run has written it."""
    raw = store.read_file(job.result_path(request))
    if raw is None:
        return None
    record = json.loads(raw)
    return record["result"] if record.get("request") == request else None


class Pool(Protocol):
    slots: int

    def submit(self, request: Request) -> Any: ...

    def wait_any(self, handles: list[Any]) -> tuple[Any, Result]: ...

    def close(self) -> None: ...


FanoutFactory = Callable[[Job, FanoutRuntime], Pool]


def visible_gpus() -> list[str]:
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


class ThreadPool:
    """Local threads; with several GPUs each running job holds one device (its settings' `device`)."""

    def __init__(self, job: Job, settings, slots: int, devices: list[str] | None = None,
                 run: Callable[[Job, Any, Request], Result] = run_job):
        self.job, self.settings, self.slots, self._run_job = job, settings, slots, run
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix=job.label)
        self._devices: Queue[str | None] = Queue()
        for i in range(slots):
            self._devices.put(devices[i % len(devices)] if devices else None)

    def _run(self, request: Request) -> Result:
        device = self._devices.get()
        try:
            settings = self.settings.model_copy(update={"device": device}) if device else self.settings
            return self._run_job(self.job, settings, request)
        finally:
            self._devices.put(device)

    def submit(self, request: Request) -> Future:
        return self._pool.submit(self._run, request)

    def wait_any(self, handles: list[Future]) -> tuple[Future, Result]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        h = next(h for h in handles if h in done)  # deterministic pick among those done
        try:
            return h, h.result()
        except Exception as exc:  # noqa: BLE001 - a lost job gets its `lost` result; the stage goes on
            return h, self.job.lost(exc)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def thread_fanout(settings) -> FanoutFactory:
    """The core's fan-out: threads, one slot per visible GPU (1 on CPU) unless `runtime.slots` says."""

    def make(job: Job, runtime: FanoutRuntime) -> ThreadPool:
        devices = visible_gpus()
        return ThreadPool(job, settings, runtime.slots or max(1, len(devices)), devices or None)

    return make


def fanout_map(pool: Pool, requests: Iterable[Request]) -> Iterator[tuple[Request, Result]]:
    """Every request through the pool, `pool.slots` in flight; yields (request, result) as they finish."""
    pending = iter(requests)
    inflight: dict[Any, Request] = {}
    while True:
        while len(inflight) < pool.slots:
            req = next(pending, None)
            if req is None:
                break
            inflight[pool.submit(req)] = req
        if not inflight:
            return
        handle, result = pool.wait_any(list(inflight))
        yield inflight.pop(handle), result
