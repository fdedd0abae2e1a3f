"""Evaluating one candidate: the EvoMerge job a fan-out slot (a thread, a Prefect task, a GPU deployment
run) runs.

`evaluate_candidate(settings, request)` takes only small JSON-able inputs -- the forge settings and a
request naming the run, the candidate's id and its recipe over checkpoint *keys* -- so it can run in
another process or on another machine: it fetches the input checkpoints from the store, merges on the
local disk (this process's scratch folder under `settings.work_dir`), scores the merge on the validation split and deletes the merge. No
weights travel. Only real outcomes are results (and stored by `fanout.run_job` under `result_path`, so a
resumed search never evaluates them twice): a score, or `nan` (worst score) for non-finite metrics. A
failure to merge or evaluate (a damaged input, a lost worker, a full disk) raises: the fan-out scores
that run worst for this search (`CANDIDATE_JOB.lost`), stores nothing, and a resumed search evaluates
the candidate again.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
import uuid
from typing import Any

from ..evals.suite import evaluate
from ..fanout import Job
from ..merge.engine import run_merge
from ..merge.recipe import Recipe
from ..model_io import load_model, resolve_device
from ..scratch import scratch_dir
from ..store import CheckpointStore
from .fitness import WORST, combined_score, crashed_result

log = logging.getLogger("agent_forge.evomerge")


def result_path(request: dict[str, Any]) -> str:
    kind = "finalists" if request.get("finalist") else "candidates"
    return f"evomerge/{request['run_id']}/{kind}/{int(request['id']):05d}.json"


def candidate_eval_settings(settings, request: dict[str, Any] | None = None):
    """A candidate is scored on `evomerge.candidate_eval`'s sample; a finalist with the stage's full eval."""
    if request and request.get("finalist"):
        return settings.eval
    c = settings.evomerge.candidate_eval
    return settings.eval.model_copy(update={"n_examples": c.n_examples, "ppl_tokens": c.ppl_tokens})


def evaluate_candidate(settings, request: dict[str, Any]) -> dict[str, Any]:
    store = CheckpointStore.from_settings(settings.store)
    started = time.time()
    result: dict[str, Any] = {"index": request["id"], "genome": request["genome"], "recipe": request["recipe"],
                              "started_at": started}
    work = scratch_dir(settings.work_dir) / f"candidate-{request['id']}-{uuid.uuid4().hex[:8]}"
    try:
        recipe = Recipe.model_validate(request["recipe"])
        folders = {k: store.get(k) for k in recipe.referenced_models()}
        run_merge(recipe, work, folders)
        model, tok = load_model(str(work), device=str(resolve_device(settings.device)))
        metrics = evaluate(model, tok, candidate_eval_settings(settings, request), split="validation")
        del model
    except Exception as exc:
        log.warning("candidate %s failed: %s: %s", request["id"], type(exc).__name__, exc)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finite = all(math.isfinite(v) for v in metrics.values())
    result.update(metrics=metrics, status="ok" if finite else "nan",
                  fitness=combined_score(metrics, settings.evomerge.fitness) if finite else WORST)
    result["finished_at"] = time.time()
    result["wall_s"] = result["finished_at"] - started
    return result


CANDIDATE_JOB = Job(name="evomerge.candidate", fn=evaluate_candidate, result_path=result_path, lost=crashed_result,
                    label="candidate", tag="evomerge-candidate")
