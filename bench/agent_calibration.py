"""Benchmark: compression calibrated on text alone against text plus the agent's own traffic, side by side on one
stored checkpoint that carries a baked runtime (by default the latest experts output of `make run`'s store), each
followed by the final agent's probes (baking's `agent_probe`: tool, memory, retrieval and persona, no prompt, the
checkpoint's runtime and experts). The uncompressed input is probed too: what compression should keep.
Writes bench/results/agent_calibration[_TAG].json.
Usage: python bench/agent_calibration.py [--store .forge/store] [--work .forge/work] [--key experts-...] [--tag T]
       [--set baking.probe_examples=32 ...]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
import uuid
from pathlib import Path

import torch

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.registry import get_stage
from agent_forge_core.stages.runner import run_stage_on

RESULTS = Path(__file__).parent / "results"
CONDITIONS = {"text": "compression.calibration_traffic=0", "text + agent traffic": None}


def probe(ctx, settings, key: str) -> dict[str, float]:
    folder = ctx.store.get(key)
    model, tok = load_model(str(folder))
    scratch = ctx.work_dir / f"bench-agent-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    try:
        return get_stage("baking").agent_probe(model, tok, folder, settings, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=".forge/store")
    ap.add_argument("--work", default=".forge/work")
    ap.add_argument("--key", default=None, help="the compression input (default: the newest experts checkpoint)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = [f"store.url={args.store}", f"work_dir={args.work}", *args.set]
    ctx = make_context(load_settings(overrides=base))
    key = args.key or max((k for k in ctx.store.list() if k.startswith("experts-")),
                          key=lambda k: ctx.store.manifest(k).created_at, default=None)
    if key is None:  # `make bench` on a machine that has not forged yet: say so, run the other benchmarks
        print(f"agent_calibration: skipped, no experts checkpoint in {args.store}: run `make run` first, or give "
              "--store and --key")
        return
    out = {"input": key, "probes_per_metric": ctx.settings.baking.probe_examples, "overrides": args.set,
           "input_agent": probe(ctx, ctx.settings, key), "conditions": {}}
    print("input", json.dumps(out["input_agent"]), flush=True)
    for name, override in CONDITIONS.items():
        settings = load_settings(overrides=[*base, *([override] if override else [])])
        cctx = make_context(settings)
        t = time.time()
        res = run_stage_on("compression", [key], cctx)
        (ckey,) = res.outputs
        info = res.info[ckey]
        out["conditions"][name] = {
            "key": ckey, "reused": res.reused, "stage_wall_s": round(time.time() - t, 1),
            "bits_per_weight": info["bits_per_weight"], "auto_choices": info["auto_choices"],
            "calibration": info.get("calibration"), "metrics": res.metrics[ckey],
            "agent": probe(cctx, settings, ckey)}
        print(name, json.dumps(out["conditions"][name]), flush=True)
    (RESULTS / f"agent_calibration{'_' + args.tag if args.tag else ''}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
