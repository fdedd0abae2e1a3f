"""The `stage-job` flow: one fan-out job of a stage (an EvoMerge candidate...), run as a deployment on a
(GPU) work pool.

Parameters are small JSON: the job's name (`<stage>.<job>`, looked up in the stage registry), the forge
settings without credentials (`ForgeSettings.portable_dict`) and the job's request. The body is the same
`fanout.run_job` that local jobs run: it runs the job on the worker and writes its result to the store,
where the stage that fanned out reads it. A job that merely returns a bad result (a candidate with the
worst score) completes; only infrastructure trouble fails or crashes the run.
"""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from typing import Any  # noqa: E402

from prefect import flow, get_run_logger  # noqa: E402

from agent_forge_core.config import ForgeSettings  # noqa: E402
from agent_forge_core.fanout import run_job  # noqa: E402
from agent_forge_core.stages.registry import get_job  # noqa: E402
from tasks.credentials import apply_credentials_block  # noqa: E402


@flow(name="stage-job", log_prints=True, persist_result=False)
def stage_job_flow(job: str, settings: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    log = get_run_logger()
    cfg = ForgeSettings.from_portable(settings)
    apply_credentials_block(cfg)
    the_job = get_job(job)
    log.info("%s on %s, CUDA_VISIBLE_DEVICES=%s", the_job.run_name(request), cfg.device,
             os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
    result = run_job(the_job, cfg, request)
    log.info("%s: %s", the_job.run_name(request), result.get("status", "done"))
    return {"id": request.get("id"), "status": result.get("status")}
