"""Fan-out on a work pool: each job is a run of the `stage-job` deployment (`flows/job.py`).

`DeploymentPool` implements the fan-out `Pool` (`slots`, `submit`, `wait_any`, `close`): `submit` creates a
flow run of the deployment (`run_deployment(..., timeout=0)`, linked to the stage's task run as a
subflow) and returns at once; `wait_any` polls the states of all runs in flight and returns the first job
whose run finished, reading its result back from the object store (`fanout.stored_result`; the run's own
return value is not persisted: nothing heavy travels through Prefect).

- A run that crashed, failed, or ran longer than `runtime.run_timeout_s` (counted from when it started
  running; time queued for a worker does not count; a run over time is cancelled) is replaced by a new
  run of the same job, up to `runtime.run_retries` times; then the job comes back as `job.lost(...)` and
  the stage goes on. A job that merely returns a bad result completes normally: no retry.
- Concurrency: `runtime.slots` runs in flight, by default the concurrency limit of the deployment's work
  pool (one per GPU), so no run waits in the queue behind the pool's limit.
- Idempotency keys (job, request digest, attempt) make a resumed stage pick up the runs it had already
  started instead of starting them again.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable
from uuid import UUID

from agent_forge_core.errors import ConfigError
from agent_forge_core.fanout import Job, stored_result
from agent_forge_core.settings_base import FanoutRuntime
from agent_forge_core.store import CheckpointStore

FINAL_RETRY = {"CRASHED", "FAILED"}  # infrastructure trouble: a new run may succeed
QUEUE_WARN_S = 60.0


@dataclass(eq=False)  # a handle: hashed by identity
class JobRun:
    request: dict[str, Any]
    flow_run_id: UUID
    attempt: int = 0
    running_since: float | None = None
    queued_since: float = 0.0
    warned_at: float = 0.0


def request_digest(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]


class DeploymentPool:
    """Jobs as deployment runs. `client` is a sync Prefect client; `launch(request, attempt)` creates a flow
    run and returns its id (injectable for tests)."""

    def __init__(self, job: Job, runtime: FanoutRuntime, store: CheckpointStore, slots: int, client,
                 launch: Callable[[dict[str, Any], int], UUID], log=None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, close: Callable[[], None] | None = None):
        self.job, self.cfg, self.store, self.slots = job, runtime, store, slots
        self.client, self.launch, self.log = client, launch, log
        self.clock, self.sleep, self._close = clock, sleep, close

    def close(self) -> None:
        if self._close:
            self._close()

    def submit(self, request: dict[str, Any]) -> JobRun:
        return JobRun(request, self.launch(request, 0), queued_since=self.clock())

    def _relaunch(self, run: JobRun, why: str) -> bool:
        """A new run for the job if retries are left."""
        if run.attempt >= self.cfg.run_retries:
            return False
        if self.log:
            self.log.warning("%s: run %s %s; starting attempt %d", self.job.run_name(run.request), run.flow_run_id,
                             why, run.attempt + 2)
        run.attempt += 1
        run.flow_run_id = self.launch(run.request, run.attempt)
        run.running_since, run.queued_since = None, self.clock()
        return True

    def _check(self, run: JobRun) -> dict[str, Any] | None:
        """The job's result if it is settled, else None (relaunching a failed run on the way)."""
        state = self.client.read_flow_run(run.flow_run_id).state
        kind = state.type.value if state is not None else "SCHEDULED"
        now = self.clock()
        if kind == "COMPLETED":
            result = stored_result(self.job, self.store, run.request)
            if result is not None:
                return result
            why = "completed without writing its result to the store"
        elif kind in FINAL_RETRY:
            why = f"ended {state.name}: {state.message or ''}".strip()
        elif kind == "CANCELLED":
            return self.job.lost(RuntimeError(f"{self.job.run_name(run.request)} run {run.flow_run_id} was cancelled"))
        elif kind == "RUNNING":
            if run.running_since is None:
                run.running_since = now
            if now - run.running_since <= self.cfg.run_timeout_s:
                return None
            self.client.set_flow_run_state(run.flow_run_id, _cancelling(), force=True)
            why = f"ran over run_timeout_s={self.cfg.run_timeout_s:g}s and was cancelled"
        else:  # scheduled, pending, cancelling, paused
            if self.log and run.running_since is None and now - max(run.queued_since, run.warned_at) > QUEUE_WARN_S:
                run.warned_at = now
                self.log.warning("%s: run %s still %s after %.0fs; is a worker polling the pool of %s?",
                                 self.job.run_name(run.request), run.flow_run_id, kind, now - run.queued_since,
                                 self.cfg.deployment)
            return None
        if self._relaunch(run, why):
            return None
        return self.job.lost(RuntimeError(f"{self.job.run_name(run.request)} run {run.flow_run_id} {why} (retries spent)"))

    def wait_any(self, handles: list[JobRun]) -> tuple[JobRun, dict[str, Any]]:
        while True:
            for run in handles:
                result = self._check(run)
                if result is not None:
                    return run, result
            self.sleep(self.cfg.poll_s)


def _cancelling():
    from prefect.states import Cancelling

    return Cancelling(message="run_timeout_s exceeded")


def pool_limit(client, deployment_name: str) -> int | None:
    dep = client.read_deployment_by_name(deployment_name)
    if not dep.work_pool_name:
        return None
    return client.read_work_pool(dep.work_pool_name).concurrency_limit


def deployment_pool(job: Job, runtime: FanoutRuntime, settings, log=None) -> DeploymentPool:
    """A pool of deployment runs of `runtime.deployment`, each running `job` on a worker."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    payload = settings.portable_dict()

    def launch(request: dict[str, Any], attempt: int) -> UUID:
        run = run_deployment(
            runtime.deployment, parameters={"job": job.name, "settings": payload, "request": request}, timeout=0,
            flow_run_name=job.run_name(request) + (f"-retry{attempt}" if attempt else ""),
            tags=["agent-forge", job.tag or job.name], idempotency_key=f"{job.name}:{request_digest(request)}:{attempt}",
        )
        return run.id

    client = get_client(sync_client=True)
    client.__enter__()
    try:
        limit = pool_limit(client, runtime.deployment)
    except Exception as exc:  # noqa: BLE001 - say what to do instead of a bare 404
        client.__exit__(None, None, None)
        raise ConfigError(
            f"runtime.executor=deployment: deployment {runtime.deployment!r} not found on the Prefect server ({exc}); "
            "register it with `agent-forge deploy` or set the stage's runtime.executor=local") from None
    n = runtime.slots or limit or 1
    if log:
        log.info("%s jobs run as %s deployment runs, %d at once (pool limit %s)", job.name, runtime.deployment, n, limit)
    return DeploymentPool(job, runtime, CheckpointStore.from_settings(settings.store), n, client, launch, log=log,
                          close=lambda: client.__exit__(None, None, None))
