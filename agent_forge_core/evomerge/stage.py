"""Stage 2, EvoMerge: merge the Cognate variants by an evolved recipe.

CMA-ES searches the merge method and each model's weight/density (optionally per layer band) and the
task-vector scale (see `genome.py`, `search.py`). Task vectors are taken from the variants' common parent
(the imported base model). Every candidate is merged and scored on the validation split, as jobs of the
stage's fan-out (`candidate.py`); the best one is merged again as the stage output and scored by the
runner on the test split, which the search never sees. The search keeps its resumable history under the
stage's own output key. The checkpoint carries `merge_recipe.yaml` (over checkpoint keys),
`evomerge_history.json` (every candidate: genome, recipe, metrics, score, wall time) and `fitness.png`.
"""
from __future__ import annotations

import json
import uuid
from typing import Iterator

from ..errors import ConfigError
from ..merge.engine import run_merge
from ..merge.recipe import Recipe
from ..stages.contract import Artifact, Built, StageContext, StageSpec
from ..store import CheckpointStore
from .candidate import CANDIDATE_JOB
from .genome import GenomeSpace
from .plot import history_rows, plot_history
from .search import History, rescore_finalists, run_search, state_path
from .settings import EvoMergeSettings


def common_base(ctx: StageContext, inputs: list[str]) -> str | None:
    parents = {tuple(ctx.store.manifest(k).parents) for k in inputs}
    if len(parents) == 1:
        (p,) = parents
        if len(p) == 1:
            return p[0]
    return None


def build(inputs: list[str], cfg: EvoMergeSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    run_id = keys[""]
    base = common_base(ctx, inputs)
    space = GenomeSpace(tuple(inputs), base, cfg)
    if not space.methods:
        raise ConfigError("evomerge: the inputs share no base model, so only `linear` can merge them; add it to evomerge.methods")
    pool = ctx.fanout(CANDIDATE_JOB, cfg.runtime)
    total = cfg.population * cfg.generations

    def on_generation(h) -> None:
        best = h.per_generation()[-1]["best_so_far"]
        ctx.progress(len(h.candidates) / total, f"evomerge: generation {len(h.generations) - 1} told, best {best:.4f}")

    ctx.log.info("evomerge: %d models, base %s, methods %s, %d genes, %d x %d candidates, %d slot(s)",
                 len(inputs), base, space.methods, space.dim, cfg.population, cfg.generations, pool.slots)
    try:
        history = run_search(space, cfg, pool, ctx.store, run_id, on_generation, ctx.log)
        history.best(ctx.store.url + "/" + state_path(run_id))  # refuses a search where every candidate failed
        best = rescore_finalists(history, cfg, pool, ctx.store, run_id, ctx.log)
    finally:
        pool.close()
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
            "recipe": best["recipe"], "validation_score": best.get("finalist_fitness", best["fitness"]),
            "validation_metrics": best.get("finalist_metrics", best["metrics"]), "search_score": best["fitness"],
            "finalists": history.finalists,
            "winner_candidate": best["index"], "winner_generation": best.get("generation"),
            "candidates": len(history.candidates), "failed_candidates": failed,
            "per_generation": history.per_generation(), "slots": pool.slots,
            "history": uris["evomerge_history.json"],
            "fitness_weights": dict(cfg.fitness),
        },
    )


def artifacts(store: CheckpointStore, key: str) -> list[Artifact]:
    """The search's table (every candidate) and the winner's recipe."""
    folder = store.get(key)
    history = History(**json.loads((folder / "evomerge_history.json").read_text()))
    info = store.manifest(key).info
    return [
        Artifact("table", "evomerge-candidates", history_rows(history),
                 f"EvoMerge candidates (validation scores) for {key}"),
        Artifact("markdown", "evomerge-winner",
                 f"## EvoMerge {key}\n\nwinner: candidate {info['winner_candidate']} (generation "
                 f"{info['winner_generation']}), validation score {info['validation_score']:.4f}, "
                 f"{info['failed_candidates']} failed of {info['candidates']}\n\n"
                 f"```yaml\n{(folder / 'merge_recipe.yaml').read_text()}```\n\nplot: {store.uri(key)}/fitness.png",
                 "EvoMerge winner recipe"),
    ]


SPEC = StageSpec(
    name="evomerge",
    version=3,  # 3: DARE drops drawn with PCG64 (faster), so merges differ from version 2's
    takes="many",
    build=build,
    settings=EvoMergeSettings,
    artifacts=artifacts,
    jobs=(CANDIDATE_JOB,),
    description="CMA-ES search over merge recipes (TIES/DARE/task arithmetic/linear) of the cognates.",
)
