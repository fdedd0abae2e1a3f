"""The whole chain on the tiny model (issue 22): every stage in pipeline order, a run killed in the middle of the
chain and resumed, a cached rerun that runs nothing, and the final agent with everything the stages gave it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TINY_OVERRIDES
from test_baking import BAKE
from test_experts import EXPERTS
from test_loop_stage import SMALL, THREE
from test_quietstar_stage import QS

from agent_forge_core.stages.registry import stage_names
from agent_forge_core.store import CheckpointStore

# every stage on, each at the tiny budgets of its own tests (which turn cognate off: here it stays on)
CHAIN = [o for o in [*TINY_OVERRIDES, "evomerge.enabled=true", "evomerge.population=2", "evomerge.generations=1",
                     *QS, "bitnet.enabled=true", "bitnet.steps=2", "bitnet.warmup=1", "bitnet.measure_ptq=false",
                     "bitnet.gates={}", *SMALL, THREE, *BAKE, *EXPERTS, "compression.enabled=true",
                     "compression.calibration_tokens=512", "compression.target_bpw=null"]
         if not o.startswith("cognate.enabled")]
BEFORE_KILL = ["import", "cognate", "evomerge", "quietstar"]  # stored when the kill comes


def stored_stages(store: CheckpointStore) -> set[str]:
    return {store.manifest(k).stage for k in store.list()}


def kill_after(stage: str, argv: list[str], env: dict, store_dir: Path, log: Path) -> None:
    """Run the forge CLI in a subprocess and SIGKILL it as soon as `stage`'s checkpoint is published."""
    run = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    try:
        while not list((store_dir / "checkpoints").glob(f"{stage}-*/manifest.json")):
            assert run.poll() is None, f"the run ended before the kill: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint of the stage within 600 s"
            time.sleep(0.1)
        run.send_signal(signal.SIGKILL)
        run.wait(30)
    finally:
        if run.poll() is None:
            run.kill()


def test_the_whole_chain_killed_in_the_middle_resumes_then_reruns_from_cache(tiny_model_dir, tmp_path, body_calls):
    from flows.ephemeral import reap_orphaned_servers
    from flows.forge import forge

    store_dir = tmp_path / "store"
    sets = [f"model.source={tiny_model_dir}", f"store.url={store_dir}", f"store.cache_dir={tmp_path}/cache",
            f"work_dir={tmp_path}/work", f"agent.index_dir={tmp_path}/indexes", *CHAIN]
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    try:
        kill_after("quietstar", [sys.executable, "-m", "flows.cli", "run", *sum((["--set", o] for o in sets), [])],
                   env, store_dir, tmp_path / "killed.log")
    finally:
        reap_orphaned_servers(str(home))  # the killed run's ephemeral server
    store = CheckpointStore(str(store_dir))
    stored = stored_stages(store)
    assert set(BEFORE_KILL) <= stored and "compression" not in stored
    assert all(store.verify(k) == [] for k in store.list())  # what was published is whole

    out = forge(overrides=sets)  # resume
    assert out["stages"] == stage_names()  # every stage, in pipeline order
    rebuilt = set(body_calls)
    assert rebuilt == set(stage_names()) - stored  # only what the kill left unbuilt
    assert not rebuilt & set(BEFORE_KILL) and {"baking", "experts", "compression"} <= rebuilt
    assert {n for n, s in out["statuses"].items() if s == "cached"} == stored
    (final,) = out["finals"]
    assert final.startswith("compression-")
    lineage = [m.stage for m in store.lineage(final)]
    assert lineage == stage_names()

    # the final agent carries what every stage gave it, and opens as one: runtime, experts, Quiet-STaR head
    folder = store.get(final)
    assert {"runtime.json", "experts.json", "dispatcher.json", "quietstar.safetensors", "compression.json"} <= \
        {p.name for p in folder.iterdir()}
    assert json.loads((folder / "runtime.json").read_text())["tools"]  # the baked tools
    from agent_forge_core.agent.runtime import Runtime
    from agent_forge_core.agent.settings import AgentSettings
    from agent_forge_core.model_io import load_model

    model, tok = load_model(str(folder))
    runtime = Runtime.open(folder, model, tok, AgentSettings(memory=str(tmp_path / "m.sqlite"),
                                                            index_dir=str(tmp_path / "indexes")))
    assert runtime.two_pass is not None and "calc" in runtime.tools  # experts re-anchored to the compressed weights
    drift = store.manifest(final).info["experts_fingerprint_drift"]
    # compression calibrated on the agent's own traffic beside the text (baking's hook, found on the lineage)
    calibration = store.manifest(final).info["calibration"]
    assert calibration["traffic_sequences"] > 0 and calibration["traffic_tokens"] > calibration["traffic_sequences"]
    assert set(drift) == {f"{d}.safetensors" for d in ("arithmetic", "recall", "instruction", "language")}

    # one report: every stage's row, the final agent measured again on the final checkpoint
    report = Path(out["report"]).read_text()
    rows = report.split("## Stages")[1].split("\n## ")[0]
    for name in stage_names():
        assert f"\n| {name}" in rows
    agent = {(r["stage"], r["capability"]): r for r in out["agent"]}
    assert {s for s, _ in agent} == {"baking", "experts"}
    assert ("experts", "dispatch (linear) all") in agent and "## Final agent" in report
    ours = store.manifest(next(k for k in store.list() if k.startswith("experts-"))).info["agent"]
    assert agent[("experts", "dispatch (linear) all")]["at_stage"] == ours["dispatch (linear) all"]
    assert all(r["final"] is not None for r in out["agent"])

    body_calls.clear()
    agent_file = store_dir / "reports" / final / "agent.json"
    stamp = agent_file.stat().st_mtime_ns
    again = forge(overrides=sets)
    assert body_calls == {} and again["finals"] == out["finals"]  # a cached rerun runs no stage
    assert set(again["statuses"].values()) == {"cached"}
    assert again["agent"] == out["agent"] and agent_file.stat().st_mtime_ns == stamp  # nor measures the agent again
