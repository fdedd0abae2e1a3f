"""EvoMerge distributed mode: each candidate is a run of the `evaluate-candidate` deployment.

`DeploymentEvaluator` implements the search's evaluator interface (`slots`, `submit`, `wait_any`):
`submit` creates a flow run of the deployment (`run_deployment(..., timeout=0)`, linked to the stage's
task run as a subflow) and returns at once; `wait_any` polls the states of all runs in flight and
returns the first candidate whose run finished, reading its result JSON back from the object store
(the run's own return value is not persisted: nothing heavy travels through Prefect).

- A run that crashed, failed, or ran longer than `evomerge.run_timeout_s` (counted from when it
  started running; time queued for a worker does not count; a run over time is cancelled) is replaced by
  a new run of the same candidate, up to `evomerge.run_retries` times; then the candidate scores worst
  and the generation goes on. A candidate that merely scores badly completes normally: no retry.
- Concurrency: `evomerge.slots` runs in flight, by default the concurrency limit of the deployment's
  work pool (one per GPU), so no run waits in the queue behind the pool's limit.
- Idempotency keys (run id, candidate, attempt, recipe hash) make a resumed search pick up the runs
  it had already started instead of starting them again.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable
from uuid import UUID

from agent_forge_core.config import ForgeSettings
from agent_forge_core.errors import ConfigError
from agent_forge_core.evomerge.candidate import result_path
from agent_forge_core.evomerge.fitness import crashed_result
from agent_forge_core.store import CheckpointStore

FINAL_RETRY = {"CRASHED", "FAILED"}  # infrastructure trouble: a new run may succeed
QUEUE_WARN_S = 60.0


@dataclass(eq=False)  # a handle: hashed by identity
class CandidateRun:
    request: dict[str, Any]
    flow_run_id: UUID
    attempt: int = 0
    running_since: float | None = None
    queued_since: float = 0.0
    warned_at: float = 0.0


def _recipe_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request["recipe"], sort_keys=True).encode()).hexdigest()[:12]


class DeploymentEvaluator:
    """Candidates as deployment runs. `client` is a sync Prefect client; `launch(request, attempt)`
    creates a flow run and returns its id (injectable for tests)."""

    def __init__(self, settings: ForgeSettings, slots: int, client, launch: Callable[[dict[str, Any], int], UUID],
                 log=None, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 close: Callable[[], None] | None = None):
        self.settings = settings
        self._close = close
        self.cfg = settings.evomerge
        self.slots = slots
        self.client = client
        self.launch = launch
        self.store = CheckpointStore.from_settings(settings.store)
        self.log = log
        self.clock = clock
        self.sleep = sleep

    def close(self) -> None:
        if self._close:
            self._close()

    def submit(self, request: dict[str, Any]) -> CandidateRun:
        return CandidateRun(request, self.launch(request, 0), queued_since=self.clock())

    def _relaunch(self, run: CandidateRun, why: str) -> bool:
        """A new run for the candidate if retries are left."""
        if run.attempt >= self.cfg.run_retries:
            return False
        if self.log:
            self.log.warning("candidate %s: run %s %s; starting attempt %d", run.request["index"], run.flow_run_id,
                             why, run.attempt + 2)
        run.attempt += 1
        run.flow_run_id = self.launch(run.request, run.attempt)
        run.running_since, run.queued_since = None, self.clock()
        return True

    def _stored_result(self, run: CandidateRun) -> dict[str, Any] | None:
        raw = self.store.read_file(result_path(run.request["run_id"], run.request["index"]))
        if raw is None:
            return None
        result = json.loads(raw)
        return result if result.get("recipe") == run.request["recipe"] else None

    def _check(self, run: CandidateRun) -> dict[str, Any] | None:
        """The candidate's result if it is settled, else None (relaunching a failed run on the way)."""
        state = self.client.read_flow_run(run.flow_run_id).state
        kind = state.type.value if state is not None else "SCHEDULED"
        now = self.clock()
        if kind == "COMPLETED":
            result = self._stored_result(run)
            if result is not None:
                return result
            why = "completed without writing its result to the store"
        elif kind in FINAL_RETRY:
            why = f"ended {state.name}: {state.message or ''}".strip()
        elif kind == "CANCELLED":
            return crashed_result(RuntimeError(f"candidate run {run.flow_run_id} was cancelled"))
        elif kind == "RUNNING":
            if run.running_since is None:
                run.running_since = now
            if now - run.running_since <= self.cfg.run_timeout_s:
                return None
            self.client.set_flow_run_state(run.flow_run_id, _cancelling(), force=True)
            why = f"ran over evomerge.run_timeout_s={self.cfg.run_timeout_s:g}s and was cancelled"
        else:  # scheduled, pending, cancelling, paused
            if self.log and run.running_since is None and now - max(run.queued_since, run.warned_at) > QUEUE_WARN_S:
                run.warned_at = now
                self.log.warning("candidate %s: run %s still %s after %.0fs; is a worker polling the pool of %s?",
                                 run.request["index"], run.flow_run_id, kind, now - run.queued_since, self.cfg.deployment)
            return None
        if self._relaunch(run, why):
            return None
        return crashed_result(RuntimeError(f"candidate run {run.flow_run_id} {why} (retries spent)"))

    def wait_any(self, handles: list[CandidateRun]) -> tuple[CandidateRun, dict[str, Any]]:
        while True:
            for run in handles:
                result = self._check(run)
                if result is not None:
                    return run, result
            self.sleep(self.cfg.poll_s)


def _cancelling():
    from prefect.states import Cancelling

    return Cancelling(message="evomerge.run_timeout_s exceeded")


def pool_limit(client, deployment_name: str) -> int | None:
    dep = client.read_deployment_by_name(deployment_name)
    if not dep.work_pool_name:
        return None
    return client.read_work_pool(dep.work_pool_name).concurrency_limit


def deployment_evaluator(settings: ForgeSettings, log=None):
    """The factory the stage context takes: (fn, slots) -> evaluator. `fn` (the local entry point) is not
    used: the deployment runs the same function on a worker."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    cfg = settings.evomerge
    payload = settings.portable_dict()

    def launch(request: dict[str, Any], attempt: int) -> UUID:
        key = f"{request['run_id']}:{request['index']}:{attempt}:{_recipe_hash(request)}"
        run = run_deployment(
            cfg.deployment, parameters={"settings": payload, "request": request}, timeout=0,
            flow_run_name=f"candidate-{request['index']}" + (f"-retry{attempt}" if attempt else ""),
            tags=["agent-forge", "evomerge-candidate", f"evomerge:{request['run_id']}"], idempotency_key=key,
        )
        return run.id

    def make(fn, slots: int) -> DeploymentEvaluator:
        client = get_client(sync_client=True)
        client.__enter__()
        try:
            limit = pool_limit(client, cfg.deployment)
        except Exception as exc:  # noqa: BLE001 - say what to do instead of a bare 404
            client.__exit__(None, None, None)
            raise ConfigError(
                f"evomerge.executor=deployment: deployment {cfg.deployment!r} not found on the Prefect server "
                f"({exc}); register it with `agent-forge deploy` or set evomerge.executor=local") from None
        n = cfg.slots or limit or cfg.population
        if log:
            log.info("evomerge: candidates run as %s deployment runs, %d at once (pool limit %s)", cfg.deployment, n, limit)
        return DeploymentEvaluator(settings, n, client, launch, log=log, close=lambda: client.__exit__(None, None, None))

    return make
