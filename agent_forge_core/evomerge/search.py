"""CMA-ES over genomes with asynchronous evaluation, elitism, and a resumable history.

Algorithm: CMA-ES (Hansen's `cma` package) in the unit cube of genes, minimizing −score. Each generation
asks `population` genomes; generation 0's first candidate is the centre of the cube (every model at the
middle of its weight range: the "uniform" recipe), so the search starts from a sensible merge.

No idle slots -- a steady-state scheme: `slots` evaluations are always in flight. When a slot frees and
the current generation's genomes are all handed out, the slot takes a genome sampled ahead from the
current distribution instead of waiting for the generation's slowest candidate; the first `population`
results to arrive form a generation and are told to CMA-ES (results sampled ahead are told with the
next generation; CMA-ES accepts solutions from a slightly older distribution). With one slot nothing is
sampled ahead and the run is fully deterministic. mergekit-evolve instead waits for the whole
generation, which leaves GPUs idle behind the slowest candidate.

Elitism: the winner is the best candidate ever evaluated, not the last distribution's mean.

Resume: after each generation is told, the history (every candidate's genome, recipe, metrics, score,
times, generation) is written to the store. A rerun of the same stage (same run id) replays the told
generations into a fresh CMA-ES -- a deterministic state from the same tells -- and continues; every
candidate's result is also stored on its own, so candidates that finished after the last checkpoint
are picked up, not re-evaluated. No optimizer object is pickled.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..fanout import Pool, fanout_map
from ..store import CheckpointStore
from ..errors import ForgeError
from .fitness import WORST
from .genome import GenomeSpace


class EvoMergeFailed(ForgeError):
    """No candidate of a search produced a score."""


def state_path(run_id: str) -> str:
    return f"evomerge/{run_id}/history.json"


@dataclass
class History:
    run_id: str
    dim: int
    candidates: list[dict[str, Any]] = field(default_factory=list)  # told candidates, in told order
    generations: list[list[int]] = field(default_factory=list)  # candidate indices told per generation
    finalists: list[dict[str, Any]] = field(default_factory=list)  # the best candidates re-scored (`rescore_finalists`)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)

    def best(self, where: str = "") -> dict[str, Any]:
        ok = [c for c in self.candidates if c["status"] == "ok"]
        if not ok:
            first = next((c for c in self.candidates if c.get("error")), None)
            raise EvoMergeFailed(
                f"every EvoMerge candidate failed ({len(self.candidates)}); the first error: "
                f"{first['error'] if first else 'none recorded'}; every candidate's status is in {where or 'the history'}. "
                "Failures are not stored: fix the cause and rerun to evaluate them again")
        return max(ok, key=lambda c: c["fitness"])

    def top(self, k: int) -> list[dict[str, Any]]:
        """The k best scored candidates with distinct recipes, best first."""
        seen, out = set(), []
        for c in sorted((c for c in self.candidates if c["status"] == "ok"), key=lambda c: -c["fitness"]):
            recipe = json.dumps(c["recipe"], sort_keys=True)
            if recipe not in seen:
                seen.add(recipe)
                out.append(c)
        return out[:k]

    def per_generation(self) -> list[dict[str, float]]:
        by_index = {c["index"]: c for c in self.candidates}
        rows, best = [], WORST
        for g, idx in enumerate(self.generations):
            scores = [by_index[i]["fitness"] for i in idx if by_index[i]["status"] == "ok"]
            best = max([best, *scores])
            rows.append({"generation": g, "best": max(scores) if scores else WORST,
                         "mean": float(np.mean(scores)) if scores else WORST, "best_so_far": best,
                         "failed": sum(by_index[i]["status"] != "ok" for i in idx)})
        return rows


def load_history(store: CheckpointStore, run_id: str, dim: int, log=None) -> History:
    """The stored history, up to (not including) its first generation with a crashed candidate: a crash is
    no outcome (a damaged input, a lost worker), so that generation is asked again -- the same genomes, as
    asks are seeded per generation -- and its candidates that did finish come back from their stored
    results, while the crashed ones are evaluated again."""
    raw = store.read_file(state_path(run_id))
    if raw is None:
        return History(run_id, dim)
    h = History(**json.loads(raw))
    if h.dim != dim:
        raise RuntimeError(f"stored EvoMerge history {run_id} has genomes of {h.dim} genes, this search {dim}")
    status = {c["index"]: c["status"] for c in h.candidates}
    for g, idx in enumerate(h.generations):
        if any(status[i] == "crashed" for i in idx):
            keep = {i for gen in h.generations[:g] for i in gen}
            if log:
                log.info("evomerge: generation %d of %s had crashed candidates; asking it again", g, run_id)
            return History(run_id, dim, [c for c in h.candidates if c["index"] in keep], h.generations[:g])
    return h


class _Optimizer:
    """`cma` with per-ask seeding, so a replayed optimizer asks exactly what the original would have."""

    def __init__(self, space: GenomeSpace, cfg):
        import cma

        self.cfg = cfg
        self.es = cma.CMAEvolutionStrategy(
            space.center(), cfg.sigma,
            {"popsize": cfg.population, "bounds": [0.0, 1.0], "seed": cfg.seed + 1, "verbose": -9},
        )
        self.asks = 0

    def ask(self, generation: int) -> list[list[float]]:
        # cma samples from numpy's global generator; seed it per ask (generation, ask number).
        np.random.seed((self.cfg.seed * 1_000_003 + generation * 1009 + self.asks) % 2**32)
        self.asks += 1
        return [list(map(float, x)) for x in self.es.ask()]

    def tell(self, genomes: list[list[float]], scores: list[float]) -> None:
        losses = [-s if s > WORST else 1e6 for s in scores]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "orphanated injected solution": genomes sampled ahead, by design
            self.es.tell([np.array(g) for g in genomes], losses)
        self.asks = 0


def run_search(
    space: GenomeSpace,
    cfg,
    pool: Pool,
    store: CheckpointStore,
    run_id: str,
    on_generation: Callable[[History], None] | None = None,
    log=None,
) -> History:
    history = load_history(store, run_id, space.dim, log)
    opt = _Optimizer(space, cfg)
    for g, idx in enumerate(history.generations):  # replay what a previous run already told
        by_index = {c["index"]: c for c in history.candidates}
        opt.ask(g)
        opt.tell([by_index[i]["genome"] for i in idx], [by_index[i]["fitness"] for i in idx])
    gen = len(history.generations)
    next_index = max([c["index"] for c in history.candidates], default=-1) + 1
    if log and gen:
        log.info("evomerge: resuming %s after generation %d (%d candidates kept)", run_id, gen - 1, len(history.candidates))
    queue: list[list[float]] = []
    if gen < cfg.generations:
        queue = opt.ask(gen)
        if gen == 0:
            seeds = [space.center()]
            if cfg.seed_inputs:
                seeds += [g for g in (space.alone(m) for m in range(len(space.models))) if g is not None]
            seeds = seeds[: len(queue)]
            queue[: len(seeds)] = seeds
    inflight: dict[Any, dict[str, Any]] = {}
    arrived: list[dict[str, Any]] = []
    budget = cfg.population * cfg.generations - len(history.candidates)
    while gen < cfg.generations:
        while len(inflight) < pool.slots and budget - len(inflight) - len(arrived) > 0:
            if not queue:
                queue = opt.ask(gen)  # sample ahead rather than leave the slot idle
            genome = queue.pop(0)
            req = {"run_id": run_id, "id": next_index, "genome": genome,
                   "recipe": space.decode(genome).model_dump(exclude_none=True, mode="json"), "generation": gen}
            next_index += 1
            inflight[pool.submit(req)] = req
        handle, result = pool.wait_any(list(inflight))
        req = inflight.pop(handle)
        result = {**result, "index": req["id"], "genome": req["genome"], "recipe": req["recipe"]}
        arrived.append(result)
        if log:
            log.info("evomerge: candidate %d (%s) score %.4f [%s]", req["id"], req["recipe"]["merge_method"],
                     result["fitness"], result["status"])
        if len(arrived) >= cfg.population:
            batch, arrived = arrived[: cfg.population], arrived[cfg.population:]
            opt.tell([c["genome"] for c in batch], [c["fitness"] for c in batch])
            for c in batch:
                c["generation"] = gen
            history.candidates += batch
            history.generations.append([c["index"] for c in batch])
            budget -= len(batch)
            store.write_file(state_path(run_id), history.to_json().encode())
            if on_generation:
                on_generation(history)
            gen += 1
            if gen < cfg.generations:
                queue = opt.ask(gen)[: max(0, cfg.population - len(inflight) - len(arrived))]
    return history


def rescore_finalists(history: History, cfg, pool: Pool, store: CheckpointStore, run_id: str, log=None) -> dict[str, Any]:
    """Against the winner's curse: the best of many candidates scored on a small sample (`candidate_eval`) is
    the best partly by luck, so the `cfg.finalists` best distinct recipes are scored again on the validation
    split with the full eval, and the best re-score wins. Each re-score is a job of the same fan-out (stored,
    never evaluated twice); the results go into the history. Returns the winning candidate with
    `finalist_fitness` and `finalist_metrics`."""
    top = history.top(cfg.finalists)
    if len(top) < 2:
        return top[0] if top else history.best()
    requests = [{"run_id": run_id, "id": c["index"], "finalist": True, "label": "finalist", "genome": c["genome"],
                 "recipe": c["recipe"], "generation": c.get("generation")} for c in top]
    by_index = {c["index"]: c for c in top}
    rows = []
    for req, result in fanout_map(pool, requests):
        c = by_index[req["id"]]
        if result["status"] == "crashed":
            raise EvoMergeFailed(f"re-scoring finalist {req['id']} failed: {result.get('error')}; rerun to try again")
        rows.append({"index": c["index"], "search_fitness": c["fitness"], "fitness": result["fitness"],
                     "metrics": result["metrics"], "recipe": c["recipe"]})
        if log:
            log.info("evomerge: finalist %d search score %.4f, full-eval score %.4f", c["index"], c["fitness"], result["fitness"])
    history.finalists = sorted(rows, key=lambda r: -r["fitness"])
    store.write_file(state_path(run_id), history.to_json().encode())
    win = history.finalists[0]
    return {**by_index[win["index"]], "finalist_fitness": win["fitness"], "finalist_metrics": win["metrics"]}
