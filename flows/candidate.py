"""The `evaluate-candidate` flow: one EvoMerge candidate, run as a deployment on a (GPU) work pool.

Parameters are small JSON: the forge settings without credentials (`ForgeSettings.portable_dict`) and
the candidate request (checkpoint keys + recipe). The body is the same `evaluate_candidate` that local
candidates run: it fetches the inputs from the store, merges on the worker's disk, scores on the
validation split and writes its result JSON to the store, where the searching flow reads it. A bad
candidate completes with the worst score; only infrastructure trouble fails or crashes the run.
"""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from typing import Any  # noqa: E402

from prefect import flow, get_run_logger  # noqa: E402

from agent_forge_core.config import ForgeSettings  # noqa: E402
from agent_forge_core.evomerge.candidate import evaluate_candidate  # noqa: E402
from tasks.storage import apply_credentials_block  # noqa: E402


@flow(name="evaluate-candidate", log_prints=True, persist_result=False)
def evaluate_candidate_flow(settings: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    log = get_run_logger()
    cfg = ForgeSettings.from_portable(settings)
    apply_credentials_block(cfg)
    log.info("candidate %s of %s (%s) on %s, CUDA_VISIBLE_DEVICES=%s", request["index"], request["run_id"],
             request["recipe"].get("merge_method"), cfg.model.device, os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
    result = evaluate_candidate(cfg, request)
    log.info("candidate %s: %s, score %.4f", request["index"], result["status"], result["fitness"])
    return {k: result[k] for k in ("index", "status", "fitness")}
