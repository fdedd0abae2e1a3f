"""EvoMerge in the forge flow on tiny models: Prefect candidate tasks in 2 slots, a crashing candidate,
outputs (recipe, history, plot), held-out scoring of the winner, cached rerun."""
import json

import pytest

import agent_forge_core.evomerge.candidate as candidate_mod
from agent_forge_core.errors import ConfigError
from agent_forge_core.merge import parse_recipe
from agent_forge_core.store import CheckpointStore
from conftest import TINY_OVERRIDES

EVO = ["cognate.focuses=[reasoning,memory]", "evomerge.enabled=true", "evomerge.population=3",
       "evomerge.generations=2", "evomerge.runtime.slots=2", "evomerge.candidate_eval.n_examples=4",
       "evomerge.candidate_eval.ppl_tokens=256", "evomerge.gates={}", "evomerge.finalists=3"]


@pytest.fixture
def overrides(tmp_path, tiny_model_dir):
    return [f"model.source={tiny_model_dir}", f"store.url={tmp_path}/store", f"store.cache_dir={tmp_path}/cache",
            f"work_dir={tmp_path}/work", *TINY_OVERRIDES, *EVO]


def test_evomerge_stage_end_to_end(overrides, tmp_path, monkeypatch):
    from flows.forge import forge

    real_merge = candidate_mod.run_merge

    def crash_candidate_1(recipe, out, folders=None, **kw):
        if "candidate-1-" in str(out):
            raise RuntimeError("injected crash in candidate 1")
        return real_merge(recipe, out, folders, **kw)

    monkeypatch.setattr(candidate_mod, "run_merge", crash_candidate_1)
    out = forge(overrides=overrides)
    assert out["stages"] == ["import", "cognate", "evomerge"] and len(out["finals"]) == 1
    store = CheckpointStore(f"{tmp_path}/store")
    key = out["finals"][0]
    m = store.manifest(key)
    cognates = m.parents
    assert len(cognates) == 2 and all(k.startswith("cognate-") for k in cognates)
    assert {"perplexity", "arithmetic", "recall", "instruction"} <= set(m.metrics)  # test split, by the runner
    assert m.info["candidates"] == 6 and m.info["failed_candidates"] == 1
    assert {"merge_recipe.yaml", "evomerge_history.json", "fitness.png"} <= set(m.files)

    folder = store.get(key)
    recipe = parse_recipe((folder / "merge_recipe.yaml").read_text())
    assert set(recipe.referenced_models()) >= set(cognates)  # over checkpoint keys, re-runnable by `agent-forge merge`
    history = json.loads((folder / "evomerge_history.json").read_text())
    cands = history["candidates"]
    crashed = [c for c in cands if c["status"] == "crashed"]
    assert [c["index"] for c in crashed] == [1] and "injected crash" in crashed[0]["error"]
    ok = [c for c in cands if c["status"] == "ok"]
    assert all(set(c["metrics"]) >= {"perplexity", "recall"} for c in ok)
    # the three best distinct recipes were scored again with the full eval; the best re-score won
    finalists = m.info["finalists"]
    assert len(finalists) == 3 and [f["fitness"] for f in finalists] == sorted((f["fitness"] for f in finalists), reverse=True)
    assert {f["search_fitness"] for f in finalists} <= {c["fitness"] for c in ok}
    assert m.info["validation_score"] == finalists[0]["fitness"] and m.info["recipe"] == finalists[0]["recipe"]
    assert len(list((tmp_path / "store" / "evomerge").glob("*/finalists/*.json"))) == 3  # stored: never twice
    # two slots: candidates overlapped, never more than two at once
    timed = [c for c in cands if "started_at" in c]  # a crashed run reports no times
    events = sorted([(c["started_at"], 1) for c in timed] + [(c["finished_at"], -1) for c in timed])
    level, peak = 0, 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 2
    assert (folder / "fitness.png").read_bytes()[:4] == b"\x89PNG"

    # every candidate was its own Prefect task run
    from prefect import get_client
    import asyncio

    async def names():
        async with get_client() as client:
            runs = await client.read_task_runs()
            return [r.name for r in runs if r.name.startswith("candidate-")]

    before = asyncio.run(names())
    assert len(before) == 6

    again = forge(overrides=overrides)  # cached: no candidate is evaluated again
    assert again["finals"] == out["finals"] and len(asyncio.run(names())) == 6


def test_plan_refuses_evomerge_without_several_models(overrides):
    from agent_forge_core.config import load_settings
    from agent_forge_core.stages.plan import plan

    with pytest.raises(ConfigError, match="merges several models"):
        plan(load_settings(overrides=[*overrides, "cognate.enabled=false"]))


def test_default_pipeline_merges_before_bitnet():
    from agent_forge_core.config import load_settings
    from agent_forge_core.stages.plan import plan

    chain = ["import", "cognate", "evomerge", "quietstar", "loop", "baking", "experts", "compression"]
    assert plan(load_settings()) == chain
    assert plan(load_settings(overrides=["bitnet.enabled=true"])) == [*chain[:4], "bitnet", *chain[4:]]


def test_slot_count_does_not_change_the_checkpoint_key(tmp_path):
    from agent_forge_core.config import load_settings
    from agent_forge_core.stages.plan import output_keys
    from agent_forge_core.stages.registry import get_stage

    def key(*o):
        s = load_settings(overrides=[f"store.url={tmp_path}/s", f"work_dir={tmp_path}/w", *o])
        return output_keys(get_stage("evomerge"), ["cognate-a", "cognate-b"], s)[""]

    assert key() == key("evomerge.runtime.slots=4") != key("evomerge.population=4")
