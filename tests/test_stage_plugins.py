"""Stage plug-ins: identity vs runtime settings and checkpoint keys, fan-out, and a stage added from a test
(one StageSpec and one registration, touching no shared file)."""
from __future__ import annotations

import math
import threading
import uuid
from typing import Any, Iterator

import pytest
import torch
import yaml
from pydantic import Field

from agent_forge_core.config import load_settings
from agent_forge_core.fanout import Job, ThreadPool, fanout_map, run_job
from agent_forge_core.settings_base import FanoutRuntime, RuntimeSection, Section, StageSection
from agent_forge_core.stages.plan import make_plan, output_keys
from agent_forge_core.stages.registry import available, get_stage
from agent_forge_core.store import CheckpointStore


# --- identity vs runtime --------------------------------------------------------------------------------

def leaves(model: Section, prefix: str) -> Iterator[tuple[str, Any, bool]]:
    """(dotted path, value, is_runtime) of every setting under a section; dicts and lists are leaves."""
    for name, f in type(model).model_fields.items():
        value, path = getattr(model, name), f"{prefix}.{f.alias or name}"
        if isinstance(value, Section):
            for p, v, rt in leaves(value, path):
                yield p, v, rt or isinstance(value, RuntimeSection)
        else:
            yield path, value, False


def alternatives(value: Any) -> list[Any]:
    """Other values of the same shape to try (the first one the config accepts is used)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [value * 1.5 + 0.1, value * 0.5]
    if isinstance(value, str):
        return ["2bit", "exponential", "float16", "float32", "bfloat16", "deployment", "pause", "other/name", "x.gguf", "*_proj.weight",
                "sft", "refuse", "other", "all", "nll", "prompt", "reinforce", "always", "channel", "tensor", "eager", "sdpa",
                4.5]  # 4.5: a setting that takes a word or a number (target_bpw)
    if isinstance(value, tuple):
        return [[value[0], value[1] + 0.1]]
    if isinstance(value, list):
        return [value[:-1], value[::-1], [*value, value[0]]] if value else [["x"], ["prompt"], [0]]
    if isinstance(value, dict):
        k = next(iter(value), None)
        return [{**value, k: value[k] * 0.5 + 0.01}] if k else [{"perplexity": 0.5}, {"arithmetic": "rows.jsonl"},
                                                                  {"language": 2.0}]
    if value is None:
        return [2, 2.0, "other", True]
    raise TypeError(value)


def override(path: str, value: Any) -> str:
    if isinstance(value, (list, dict)):
        value = [v.model_dump() if isinstance(v, Section) else v for v in value] if isinstance(value, list) else value
        return f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}"
    return f"{path}={yaml.safe_dump(value).strip().removesuffix('...').strip()}"


def changed(path: str, value: Any):
    """Settings with `path` set to another valid value, or None if none of the alternatives is valid."""
    from agent_forge_core.errors import ConfigError

    for alt in alternatives(value):
        try:
            s = load_settings(overrides=[override(path, alt)])
        except ConfigError:
            continue
        if s != load_settings():
            return s
    return None


def all_keys(s) -> dict[str, dict[str, str]]:
    return {n: output_keys(get_stage(n), [] if get_stage(n).takes == "none" else ["parent-a", "parent-b"], s)
            for n in available()}


def test_runtime_settings_never_change_a_key_and_identity_settings_always_do():
    base = load_settings()
    keys = all_keys(base)
    sections = ["model", "eval", *available()]
    tried, unchanged = 0, []
    for top in sections:
        for path, value, runtime in leaves(base.section(top) if top in available() else getattr(base, top), top):
            if path.endswith(".enabled"):
                continue  # whether a stage runs: its key is only used when it does
            s = changed(path, value)
            if s is None:
                unchanged.append(path)
                continue
            tried += 1
            after = all_keys(s)
            if runtime:
                assert after == keys, path
            else:
                affected = available() if top in ("model", "eval") else [top]
                assert all(after[n] != keys[n] for n in affected), path
                assert all(after[n] == keys[n] for n in available() if n not in affected), path
    # top-level runtime settings
    for o in ("device=cpu", "work_dir=/elsewhere", "run_name=other", "store.url=s3://b/p", "deploy.nightly=true"):
        assert all_keys(load_settings(overrides=[o])) == keys, o
    assert unchanged == [] and tried >= 69, (tried, unchanged)  # every setting of every built stage was varied


def test_a_runtime_setting_named_at_its_old_place_says_where_it_lives_now():
    from agent_forge_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"runtime setting now: evomerge\.runtime\.slots"):
        load_settings(overrides=["evomerge.slots=2"])
    with pytest.raises(ConfigError, match=r"top-level setting now: device"):
        load_settings(overrides=["model.device=cpu"])


# --- fan-out ---------------------------------------------------------------------------------------------

def square_job(calls: list, lock=threading.Lock()) -> Job:
    def fn(settings, request):
        with lock:
            calls.append(request["id"])
        return {"square": request["x"] ** 2}

    return Job("test.square", fn, lambda r: f"test/square/{r['id']}.json", lambda exc: {"lost": str(exc)}, label="sq")


def test_fanout_map_runs_every_request_once_and_results_are_stored(tiny_settings):
    s = tiny_settings()
    calls: list = []
    job = square_job(calls)
    reqs = [{"id": i, "x": i} for i in range(7)]
    got = dict((r["id"], res["square"]) for r, res in fanout_map(ThreadPool(job, s, 3), reqs))
    assert got == {i: i * i for i in range(7)} and sorted(calls) == list(range(7))
    # stored: the same request again is answered from the store; a changed request runs again
    assert run_job(job, s, reqs[3]) == {"square": 9} and sorted(calls) == list(range(7))
    assert run_job(job, s, {"id": 3, "x": 5}) == {"square": 25} and calls[-1] == 3


# --- a stage added from a test ---------------------------------------------------------------------------

class RescaleSettings(StageSection):
    """A toy stage: scale the final norm by the factor (of `factors`) that gives the lowest validation
    perplexity, each factor scored by its own fan-out job."""

    factors: list[float] = Field(default_factory=lambda: [0.5, 1.0, 1.5])
    runtime: FanoutRuntime = Field(default_factory=FanoutRuntime)


def _score(settings, request) -> dict:
    from agent_forge_core.evals.suite import perplexity
    from agent_forge_core.evals.text import natural_text
    from agent_forge_core.model_io import load_model

    store = CheckpointStore.from_settings(settings.store)
    model, tok = load_model(str(store.get(request["parent"])))
    with torch.no_grad():
        model.model.norm.weight.mul_(request["factor"])
    return {"factor": request["factor"], "perplexity": perplexity(model, tok, natural_text("validation"), 256, 64)}


RESCALE_JOB = Job("rescale.factor", _score, lambda r: f"rescale/{r['run']}/{r['id']}.json",
                  lambda exc: {"perplexity": math.inf}, label="factor", tag="rescale-factor")


def _build(inputs, cfg: RescaleSettings, ctx, keys):
    from agent_forge_core.model_io import load_model, save_model
    from agent_forge_core.stages.contract import Built

    (parent,) = inputs
    pool = ctx.fanout(RESCALE_JOB, cfg.runtime)
    reqs = [{"id": i, "run": keys[""], "parent": parent, "factor": f} for i, f in enumerate(cfg.factors)]
    try:
        scored = [res for _, res in fanout_map(pool, reqs)]
    finally:
        pool.close()
    best = min(scored, key=lambda r: (r["perplexity"], r["factor"]))
    model, tok = load_model(str(ctx.store.get(parent)))
    with torch.no_grad():
        model.model.norm.weight.mul_(best["factor"])
    folder = save_model(model, tok, ctx.work_dir / f"rescale-{uuid.uuid4().hex}")
    yield Built("", folder, parent, info={"factor": best["factor"], "scored": scored})


def _artifacts(store, key):
    from agent_forge_core.stages.contract import Artifact

    return [Artifact("markdown", "rescale-choice", f"factor {store.manifest(key).info['factor']}", "rescale")]


def rescale_spec():
    from agent_forge_core.stages.contract import StageSpec

    return StageSpec(name="rescale", version=1, takes="one", build=_build, settings=RescaleSettings,
                     artifacts=_artifacts, jobs=(RESCALE_JOB,), description="test-only stage")


def test_a_stage_registered_from_a_test_runs_in_the_flow(tiny_settings, tmp_path):
    """Everything a stage needs -- its settings section, --set overrides, the plan and its keys, a Prefect
    task, fan-out jobs as Prefect tasks, artifacts, gates, the report -- from one StageSpec."""
    from prefect import get_client
    import asyncio

    from agent_forge_core.errors import ConfigError
    from agent_forge_core.stages.registry import registered
    from flows.forge import forge

    with pytest.raises(ConfigError, match="unknown section 'rescale'"):
        load_settings(overrides=["rescale.enabled=true"])
    overrides = [f"model.source={tiny_settings().model.source}", f"store.url={tmp_path}/store",
                 f"work_dir={tmp_path}/work", "eval.n_examples=4", "eval.ppl_tokens=256", "eval.ppl_window=64",
                 "eval.max_new_tokens=8", "cognate.enabled=false", "evomerge.enabled=false",
                 *(f"{n}.enabled=false" for n in ("quietstar", "loop", "baking", "experts", "compression")),
                 "rescale.enabled=true", "rescale.runtime.slots=2", "rescale.gates={}"]
    with registered(rescale_spec(), after="compression"):
        s = load_settings(overrides=overrides)
        assert s.section("rescale").factors == [0.5, 1.0, 1.5] and make_plan(s).names == ["import", "rescale"]
        out = forge(overrides=overrides)
        assert out["stages"] == ["import", "rescale"]
        (key,) = out["finals"]
        m = CheckpointStore(f"{tmp_path}/store").manifest(key)
        scored = {r["factor"]: r["perplexity"] for r in m.info["scored"]}
        assert set(scored) == {0.5, 1.0, 1.5} and m.info["factor"] == min(scored, key=scored.get)
        assert m.stage == "rescale" and "perplexity" in m.metrics

        async def read():
            async with get_client() as client:
                runs = await client.read_task_runs()
                arts = await client.read_artifacts()
                return [r.name for r in runs], {a.key for a in arts}

        names, keys = asyncio.run(read())
        assert {"factor-0", "factor-1", "factor-2"} <= set(names) and "rescale-choice" in keys
    assert "rescale" not in available()  # unregistered after the block
