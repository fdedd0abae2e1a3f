"""Stage 2, EvoMerge: merge the Cognate variants by an evolved recipe.

CMA-ES searches the merge method and each model's weight/density (optionally per layer band) and the
task-vector scale (see `evomerge/genome.py`, `evomerge/search.py`). Task vectors are taken from the
variants' common parent (the imported base model). Every candidate is merged and scored on the
validation split; the best one is merged again as the stage output and scored by the runner on the test
split, which the search never sees. The checkpoint carries `merge_recipe.yaml` (over checkpoint keys),
`evomerge_history.json` (every candidate: genome, recipe, metrics, score, wall time) and `fitness.png`.
"""
from __future__ import annotations

import functools
import uuid
from typing import Iterator

import torch

from ..config import EvoMergeSettings
from ..errors import ConfigError
from ..evomerge.candidate import evaluate_candidate
from ..evomerge.evaluators import ThreadEvaluator
from ..evomerge.genome import GenomeSpace
from ..evomerge.plot import plot_history
from ..evomerge.search import run_search
from ..merge.engine import run_merge
from ..merge.recipe import Recipe
from .contract import Built, StageContext, StageSpec
from .registry import register


def common_base(ctx: StageContext, inputs: list[str]) -> str | None:
    parents = {tuple(ctx.store.manifest(k).parents) for k in inputs}
    if len(parents) == 1:
        (p,) = parents
        if len(p) == 1:
            return p[0]
    return None


def default_slots() -> int:
    return max(1, torch.cuda.device_count())


def build(inputs: list[str], cfg: EvoMergeSettings, ctx: StageContext, variants: list[str]) -> Iterator[Built]:
    from .runner import output_keys

    run_id = output_keys(SPEC, inputs, ctx)[""]
    base = common_base(ctx, inputs)
    space = GenomeSpace(tuple(inputs), base, cfg)
    if not space.methods:
        raise ConfigError("evomerge: the inputs share no base model, so only `linear` can merge them; add it to evomerge.methods")
    slots = cfg.slots or default_slots()
    fn = functools.partial(evaluate_candidate, ctx.settings)
    if ctx.candidate_evaluator is not None:
        evaluator = ctx.candidate_evaluator(fn, slots)
    else:
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or None
        evaluator = ThreadEvaluator(fn, slots, devices)
    slots = evaluator.slots  # a deployment evaluator takes its work pool's limit by default
    total = cfg.population * cfg.generations

    def on_generation(h) -> None:
        best = h.per_generation()[-1]["best_so_far"]
        ctx.progress(len(h.candidates) / total, f"evomerge: generation {len(h.generations) - 1} told, best {best:.4f}")

    ctx.log.info("evomerge: %d models, base %s, methods %s, %d genes, %d x %d candidates, %d slot(s)",
                 len(inputs), base, space.methods, space.dim, cfg.population, cfg.generations, slots)
    try:
        history = run_search(space, cfg, evaluator, ctx.store, run_id, on_generation, ctx.log)
    finally:
        close = getattr(evaluator, "close", None)
        if close:
            close()
    best = history.best()
    folder = ctx.work_dir / f"evomerge-{uuid.uuid4().hex}"
    recipe = Recipe.model_validate(best["recipe"])
    run_merge(recipe, folder, {k: ctx.store.get(k) for k in recipe.referenced_models()})  # atomic: no partial folder
    (folder / "evomerge_history.json").write_text(history.to_json())
    plot_history(history, folder / "fitness.png")
    uris = {name: ctx.store.write_file(f"evomerge/{run_id}/{name}", (folder / name).read_bytes())
            for name in ("merge_recipe.yaml", "fitness.png", "evomerge_history.json")}
    failed = sum(c["status"] != "ok" for c in history.candidates)
    yield Built(
        variant="", folder=folder, parent=base or inputs[0],
        info={
            "recipe": best["recipe"], "validation_score": best["fitness"], "validation_metrics": best["metrics"],
            "winner_candidate": best["index"], "winner_generation": best.get("generation"),
            "candidates": len(history.candidates), "failed_candidates": failed,
            "per_generation": history.per_generation(), "slots": slots,
            "history": uris["evomerge_history.json"],
            "fitness_weights": dict(cfg.fitness),
        },
    )


SPEC = register(
    StageSpec(
        name="evomerge",
        version=1,
        takes="many",
        build=build,
        # where and how many evaluations run at once does not change what is searched: a resumed run may
        # use other slots or another executor
        hashed_config=lambda s: s.evomerge.model_dump(
            mode="json", exclude={"slots", "executor", "deployment", "run_timeout_s", "run_retries", "poll_s"}),
        description="CMA-ES search over merge recipes (TIES/DARE/task arithmetic/linear) of the cognates.",
    )
)
