"""EvoMerge candidates as Prefect tasks: each candidate is its own task run (visible in the UI), at most
`slots` in flight (the search keeps exactly that many submitted). The tag `evomerge-candidate` lets an
operator add a server-side tag concurrency limit on top. Task parameters are the settings and a small
request (checkpoint keys + recipe); results are small JSON, also written to the object store by the
candidate itself, so nothing heavy is persisted by Prefect."""
from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from agent_forge_core.config import ForgeSettings
from agent_forge_core.evomerge.candidate import evaluate_candidate
from agent_forge_core.evomerge.fitness import crashed_result

from .stage_task import retry_condition


@task(
    name="evomerge-candidate",
    task_run_name="candidate-{request[index]}",
    tags=["agent-forge", "evomerge-candidate"],
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_condition,  # only infrastructure errors; a bad candidate returns a worst score
    cache_policy=NO_CACHE,
    persist_result=False,
)
def evaluate_candidate_task(settings: ForgeSettings, request: dict[str, Any]) -> dict[str, Any]:
    return evaluate_candidate(settings, request)


class PrefectEvaluator:
    def __init__(self, settings: ForgeSettings, slots: int):
        self.settings = settings
        self.slots = slots

    def submit(self, request: dict[str, Any]):
        return evaluate_candidate_task.submit(self.settings, request)

    def wait_any(self, handles: list) -> tuple[Any, dict[str, Any]]:
        done = next(as_completed(handles))
        try:
            return done, done.result()
        except Exception as exc:  # noqa: BLE001 - retries are spent: score it worst, keep the generation going
            return done, crashed_result(exc)


def prefect_evaluator(settings: ForgeSettings):
    """The factory the stage context takes: (fn, slots) -> evaluator (fn is the same candidate entry point)."""
    return lambda fn, slots: PrefectEvaluator(settings, slots)
