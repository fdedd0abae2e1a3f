"""The Prefect layer's fan-out: a stage's jobs as Prefect tasks in the flow's process (each job its own
task run, visible in the UI, tagged with the job's tag so an operator can add a tag concurrency limit on
top), or as runs of a deployment on a work pool (`deployment_pool.py`), as the stage's
`runtime.executor` says. Task parameters are the job's name, the settings and a small request; results
are small JSON, stored by the job itself (`fanout.run_job`), so nothing heavy is persisted by Prefect."""
from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from agent_forge_core.config import ForgeSettings
from agent_forge_core.fanout import FanoutFactory, Job, run_job, visible_gpus
from agent_forge_core.settings_base import FanoutRuntime
from agent_forge_core.stages.registry import get_job

from .retry import retry_condition


@task(
    name="stage-job",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_condition,  # only infrastructure errors; a bad job result is a result
    cache_policy=NO_CACHE,
    persist_result=False,
)
def stage_job_task(job: str, settings: ForgeSettings, request: dict[str, Any]) -> dict[str, Any]:
    return run_job(get_job(job), settings, request)


class PrefectTaskPool:
    def __init__(self, job: Job, settings: ForgeSettings, slots: int):
        self.job, self.settings, self.slots = job, settings, slots
        self._task = stage_job_task.with_options(tags=["agent-forge", job.tag or job.name])

    def submit(self, request: dict[str, Any]):
        return self._task.with_options(task_run_name=self.job.run_name(request)).submit(self.job.name, self.settings, request)

    def wait_any(self, handles: list) -> tuple[Any, dict[str, Any]]:
        done = next(as_completed(handles))
        try:
            return done, done.result()
        except Exception as exc:  # noqa: BLE001 - retries are spent: the job is lost, the stage goes on
            return done, self.job.lost(exc)

    def close(self) -> None:
        return None


def prefect_fanout(settings: ForgeSettings, log=None) -> FanoutFactory:
    """The factory the stage context takes: (job, runtime) -> pool."""

    def make(job: Job, runtime: FanoutRuntime):
        if runtime.executor == "deployment":
            from .deployment_pool import deployment_pool

            return deployment_pool(job, runtime, settings, log)
        return PrefectTaskPool(job, settings, runtime.slots or max(1, len(visible_gpus())))

    return make
