"""The final agent, measured: what each stage gave the agent (tool use, memory, retrieval, persona, dispatch),
measured again on the last checkpoint of the run with its runtime on, beside what the stage measured on its own
output.

Every stage on the final checkpoint's lineage whose `StageSpec` has an `agent_probe` runs it on the final
checkpoint (loaded once); the stage's own numbers are its manifest's info["agent"]. The rows are stored as
`reports/<final key>/agent.json`: the key already names the whole lineage and its config, so a rerun of the same
chain reads them instead of measuring again.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

from . import __version__
from .model_io import load_model
from .report import label
from .stages.registry import available, get_stage
from .store import CheckpointStore

AGENT_FILE = "agent.json"


def probing_stages(store: CheckpointStore, key: str) -> list:
    """The manifests on the lineage of `key` whose stage measures a capability of the agent."""
    return [m for m in store.lineage(key) if m.stage in available() and get_stage(m.stage).agent_probe]


def measure_final_agent(store: CheckpointStore, key: str, settings, work_dir: Path, log=None, device: str = "cpu"
                        ) -> list[dict]:
    """Rows {stage, capability, at_stage, final} for the final checkpoint `key` (an empty list when no stage on
    its lineage probes the agent)."""
    path = f"reports/{key}/{AGENT_FILE}"
    stored = store.read_file(path)
    if stored is not None:
        data = json.loads(stored)
        if data.get("version") == __version__:
            return data["rows"]
    stages = probing_stages(store, key)
    if not stages:
        return []
    t0 = time.monotonic()
    folder = store.get(key)
    model, tok = load_model(str(folder), device=device)
    scratch = Path(work_dir) / f"agent-probe-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for m in stages:
            final = get_stage(m.stage).agent_probe(model, tok, folder, settings, scratch)
            own = m.info.get("agent", {})
            rows += [{"stage": label(m), "capability": c, "at_stage": own.get(c), "final": final.get(c)}
                     for c in dict.fromkeys([*own, *final])]
            if log:
                log.info("final agent: %s measured on %s", m.stage, key)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    store.write_file(path, json.dumps({"version": __version__, "key": key, "rows": rows,
                                       "wall_s": round(time.monotonic() - t0, 1)}, indent=1).encode())
    return rows

