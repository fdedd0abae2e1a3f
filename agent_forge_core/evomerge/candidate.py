"""Evaluating one candidate: the unit of work a slot (a thread, a Prefect task, a GPU deployment run) does.

`evaluate_candidate(settings, request)` takes only small JSON-able inputs -- the forge settings and a
request naming the run, the candidate's index and its recipe over checkpoint *keys* -- so it can run in
another process or on another machine: it fetches the input checkpoints from the store, merges on the
local disk, scores the merge on the validation split, writes the result JSON to the store, deletes the
merge and returns the result. No weights travel. A result already in the store is returned as is, so a
retried or resumed candidate is never evaluated twice (the stored recipe must match the request's). A candidate whose merge or evaluation fails, or
whose metrics are not finite, gets the worst score and its error is recorded; it never raises.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from ..config import ForgeSettings
from ..evals.suite import evaluate
from ..merge.engine import run_merge
from ..merge.recipe import Recipe
from ..model_io import load_model, resolve_device
from ..store import CheckpointStore
from .fitness import WORST, combined_score

log = logging.getLogger("agent_forge.evomerge")
# transformers builds models under process-global patches (meta-device init); two threads loading at
# once corrupt each other ("Cannot copy out of meta tensor"). Loading is short; merging and evaluating
# still run in parallel.
_LOAD_LOCK = threading.Lock()


def result_path(run_id: str, index: int) -> str:
    return f"evomerge/{run_id}/candidates/{index:05d}.json"


def candidate_eval_settings(settings: ForgeSettings):
    c = settings.evomerge.candidate_eval
    return settings.eval.model_copy(update={"n_examples": c.n_examples, "ppl_tokens": c.ppl_tokens})


def evaluate_candidate(settings: ForgeSettings, request: dict[str, Any]) -> dict[str, Any]:
    store = CheckpointStore.from_settings(settings.store)
    path = result_path(request["run_id"], request["index"])
    cached = store.read_file(path)
    if cached is not None and json.loads(cached).get("recipe") == request["recipe"]:
        return json.loads(cached)
    started = time.time()
    result: dict[str, Any] = {"index": request["index"], "genome": request["genome"], "recipe": request["recipe"],
                              "started_at": started}
    work = Path(settings.work_dir) / f"candidate-{request['index']}-{uuid.uuid4().hex[:8]}"
    try:
        recipe = Recipe.model_validate(request["recipe"])
        folders = {k: store.get(k) for k in recipe.referenced_models()}
        run_merge(recipe, work, folders)
        device = request.get("device") or settings.model.device
        with _LOAD_LOCK:
            model, tok = load_model(str(work), device=str(resolve_device(device)))
        metrics = evaluate(model, tok, candidate_eval_settings(settings), split="validation")
        del model
        finite = all(math.isfinite(v) for v in metrics.values())
        result.update(metrics=metrics, status="ok" if finite else "nan",
                      fitness=combined_score(metrics, settings.evomerge.fitness) if finite else WORST)
    except Exception as exc:  # noqa: BLE001 - a bad candidate must not stop the search
        log.warning("candidate %s failed: %s", request["index"], exc)
        result.update(metrics={}, status="crashed", fitness=WORST, error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=5))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["finished_at"] = time.time()
    result["wall_s"] = result["finished_at"] - started
    store.write_file(path, json.dumps(result, indent=1).encode())
    return result
