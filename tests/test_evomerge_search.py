"""The search on its own (fake fitness, no models): improvement, elitism, async slots, resume."""
import threading
import time

import pytest

from agent_forge_core.config import load_settings
from agent_forge_core.evomerge.fitness import WORST, crashed_result
from agent_forge_core.evomerge.genome import GenomeSpace
from agent_forge_core.evomerge.search import load_history, run_search
from agent_forge_core.fanout import Job, ThreadPool
from agent_forge_core.store import CheckpointStore

MODELS = ("cognate-a", "cognate-b", "cognate-c")


def ThreadEvaluator(fn, slots=1):
    """The core's thread pool over a fake candidate job (results not stored: no settings, no store)."""
    job = Job("test.fake", lambda settings, req: fn(req), lambda req: "", crashed_result, label="candidate")
    return ThreadPool(job, None, slots, run=lambda job, settings, req: job.fn(settings, req))


def cfg(**kw):
    over = [f"evomerge.{k}={v}" for k, v in kw.items()]
    return load_settings(overrides=over).evomerge


def fake_fitness(calls, fail=(), delay=0.0):
    """Score: the merge wants model weights (0.9, 0.3, 0.6) and TIES. Counts its calls."""
    target = (0.9, 0.3, 0.6)
    lock = threading.Lock()

    def fn(req):
        with lock:
            calls.append(req["id"])
        if delay:
            time.sleep(delay * (1 + req["id"] % 3))
        if req["id"] in fail:
            raise RuntimeError("worker lost")
        r = req["recipe"]
        w = [m["parameters"]["weight"] for m in r["models"]]
        score = -sum((a - b) ** 2 for a, b in zip(w, target)) + (0.3 if r["merge_method"] == "ties" else 0)
        return {"status": "ok", "fitness": score, "metrics": {"x": score}, "started_at": time.time(),
                "finished_at": time.time()}

    return fn


def test_genome_decodes_to_valid_recipes():
    c = cfg(bands=2)
    space = GenomeSpace(MODELS, "import-x", c)
    assert space.dim == 4 + 2 * 3 * 2 + 1
    r = space.decode(space.center())
    assert r.merge_method == "task_arithmetic" and r.base_model == "import-x"
    assert r.models[0].parameters["weight"] == [0.6, 0.6]
    x = space.center()
    x[1] = 0.9  # the ties gene wins
    r = space.decode(x)
    assert r.merge_method == "ties" and r.models[2].parameters["density"] == [0.6, 0.6]
    assert GenomeSpace(MODELS, None, c).methods == ["linear"]  # no base: only linear is possible


def test_cma_es_improves_and_keeps_the_best(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    c = cfg(population=8, generations=6, sigma=0.3, methods="[ties]")
    calls = []
    h = run_search(GenomeSpace(MODELS, "base", c), c, ThreadEvaluator(fake_fitness(calls)), store, "run1")
    rows = h.per_generation()
    assert len(h.candidates) == 48 and len(calls) == 48
    assert rows[-1]["best_so_far"] > rows[0]["best"] + 0.05
    assert rows[-1]["best_so_far"] > 0.3 - 0.02  # the optimum is 0.3
    assert rows[-1]["mean"] > rows[0]["mean"]
    assert h.best()["fitness"] == max(c["fitness"] for c in h.candidates)
    assert h.candidates[0]["genome"] == [0.5] * len(h.candidates[0]["genome"])  # generation 0 starts at the centre


def test_crashed_candidates_score_worst_and_the_generation_completes(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    c = cfg(population=4, generations=2)
    h = run_search(GenomeSpace(MODELS, "base", c), c, ThreadEvaluator(fake_fitness([], fail={1, 5})), store, "run1")
    bad = [x for x in h.candidates if x["status"] != "ok"]
    assert sorted(x["index"] for x in bad) == [1, 5] and all(x["fitness"] == WORST for x in bad)
    assert "worker lost" in bad[0]["error"] and len(h.generations) == 2


def test_slots_stay_busy_and_bounded(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    c = cfg(population=4, generations=3)
    running, peak, lock = [0], [0], threading.Lock()
    # the first three evaluations wait for each other: they pass only if three really run at once
    together, calls = threading.Barrier(3, timeout=30), [0]
    inner = fake_fitness([], delay=0.02)

    def fn(req):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            calls[0] += 1
            first = calls[0] <= 3
        try:
            if first:
                together.wait()
            return inner(req)
        finally:
            with lock:
                running[0] -= 1

    h = run_search(GenomeSpace(MODELS, "base", c), c, ThreadEvaluator(fn, slots=3), store, "run1")
    assert peak[0] == 3 and len(h.candidates) == 12
    assert all(x["status"] == "ok" for x in h.candidates)


class Killed(Exception):
    pass


def test_resume_after_a_kill_does_not_reevaluate(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    c = cfg(population=4, generations=3)
    space = GenomeSpace(MODELS, "base", c)
    first = []

    def kill_after_gen1(h):
        if len(h.generations) == 2:
            raise Killed()

    with pytest.raises(Killed):
        run_search(space, c, ThreadEvaluator(fake_fitness(first)), store, "run1", on_generation=kill_after_gen1)
    assert len(load_history(store, "run1", space.dim).generations) == 2
    second = []
    h = run_search(space, c, ThreadEvaluator(fake_fitness(second)), store, "run1")
    assert sorted(first) == list(range(8))
    assert sorted(second) == list(range(8, 12))  # only generation 2 is evaluated
    assert [len(g) for g in h.generations] == [4, 4, 4]
    # the resumed run asks what an uninterrupted run asks (one slot: deterministic)
    ref = run_search(space, c, ThreadEvaluator(fake_fitness([])), CheckpointStore(str(tmp_path / "s2")), "run1")
    assert [x["genome"] for x in ref.candidates] == [x["genome"] for x in h.candidates]


def test_generation_0_scores_the_centre_and_each_input_alone(tmp_path):
    c = cfg(population=6, generations=1)
    space = GenomeSpace(MODELS, "base", c)
    h = run_search(space, c, ThreadEvaluator(fake_fitness([])), CheckpointStore(str(tmp_path / "store")), "run1")
    recipes = [x["recipe"] for x in h.candidates]
    assert h.candidates[0]["genome"] == space.center()
    for m, r in enumerate(recipes[1:4]):
        # a linear merge with one non-zero weight is that model (linear normalizes the weights)
        assert r["merge_method"] == "linear"
        assert [e["parameters"]["weight"] for e in r["models"]] == [1.2 if i == m else 0.0 for i in range(3)]
    assert cfg(seed_inputs=False).seed_inputs is False
    assert GenomeSpace(MODELS, "base", cfg(weight_bounds="[0.1,1.2]")).alone(0) is None  # cannot be alone


def test_finalists_are_rescored_with_the_full_eval_and_the_best_rescore_wins(tmp_path):
    from agent_forge_core.evomerge.search import rescore_finalists

    store = CheckpointStore(str(tmp_path / "store"))
    c = cfg(population=6, generations=2, finalists=3)
    space = GenomeSpace(MODELS, "base", c)
    search = fake_fitness([])
    rescored = []

    def fn(req):
        out = search(req)
        if req.get("finalist"):  # the full eval disagrees with the small sample: it reverses the order
            rescored.append(req["id"])
            out = {**out, "fitness": -out["fitness"]}
        return out

    pool = ThreadEvaluator(fn)
    h = run_search(space, c, pool, store, "run1")
    top = h.top(3)
    assert [x["fitness"] for x in top] == sorted((x["fitness"] for x in top), reverse=True)
    assert len({str(x["recipe"]) for x in top}) == 3  # distinct recipes
    win = rescore_finalists(h, c, pool, store, "run1")
    assert sorted(rescored) == sorted(x["index"] for x in top)
    assert win["index"] == top[-1]["index"] and win["finalist_fitness"] == -top[-1]["fitness"]  # not the luckiest
    assert [f["index"] for f in h.finalists][0] == win["index"]
    assert load_history(store, "run1", space.dim).finalists == h.finalists  # kept with the history
    one = rescore_finalists(h, cfg(finalists=1), pool, store, "run1")
    assert one["index"] == h.best()["index"] and len(rescored) == 3  # finalists=1: no re-scoring
