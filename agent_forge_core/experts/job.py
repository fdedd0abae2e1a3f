"""Scoring one agent design: the job the stage's fan-out runs (a thread, a Prefect task or a deployment run on
the GPU pool, as EvoMerge's candidates).

`score_design(settings, request)` takes small JSON: the key of the search's internal checkpoint (the built
folder: base weights, experts, dispatcher, published once before the search), the design, the split, the
tasks and the number of examples. It loads that checkpoint from the store, scores the design and returns the
bootstrap summary, which `fanout.run_job` stores under `result_path`: a resumed search never scores a design
twice. A design whose evaluation fails scores worst for this search (`lost`) and is not stored.
"""
from __future__ import annotations

from typing import Any

from ..fanout import Job
from ..model_io import load_model, resolve_device
from ..store import CheckpointStore
from .designs import Design, DesignEvaluator

WORST = -1.0


def result_path(request: dict[str, Any]) -> str:
    return f"experts/{request['run_id']}/designs/{request['split']}/{request['id']}.json"


def score_design(settings, request: dict[str, Any]) -> dict[str, Any]:
    store = CheckpointStore.from_settings(settings.store)
    folder = store.get(request["checkpoint"])
    model, tok = load_model(str(folder), device=str(resolve_device(settings.device)))
    evaluator = DesignEvaluator(model, tok, folder, settings.eval, settings.agent, request["tasks"], request["examples"])
    out = evaluator.score(Design.from_dict(request["design"]), request["split"], request.get("seed", 0))
    return {**out, "status": "ok"}


def lost(exc: BaseException) -> dict[str, Any]:
    return {"status": "crashed", "median": WORST, "mean": WORST, "lo": WORST, "hi": WORST, "n": 0,
            "error": f"{type(exc).__name__}: {exc}"}


DESIGN_JOB = Job(name="experts.design", fn=score_design, result_path=result_path, lost=lost, label="design",
                 tag="experts-design")
