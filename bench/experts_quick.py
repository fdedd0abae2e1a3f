"""Benchmark: the experts stage in its quick profile on the default model, as the runner runs it (build, then its
two-pass evaluation and gates), timed from the import's output (the import is run first and not timed).
Goal: <= 12 min on 2 cores. Writes bench/results/experts_quick.json.
Usage: python bench/experts_quick.py [--work .forge/bench-experts-quick] [--set section.key=value ...]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.stages.runner import run_stage_on

OUT = Path(__file__).parent / "results" / "experts_quick.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=".forge/bench-experts-quick")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(args.work)
    shutil.rmtree(work / "work", ignore_errors=True)
    s = load_settings(overrides=[f"store.url={work / 'store'}", f"store.cache_dir={work / 'cache'}",
                                 f"work_dir={work / 'work'}", "cognate.enabled=false", "evomerge.enabled=false",
                                 "experts.enabled=true", *args.set])
    ctx = make_context(s, progress=lambda f, m: print(f"{time.strftime('%H:%M:%S')} {f:.2f} {m}", flush=True))
    base = run_stage_on("import", [], ctx)
    # a stored output (or trained experts) from an earlier run would not be a timing
    for key in ctx.store.list():
        if key.startswith("experts-"):
            ctx.store.discard(key)
    shutil.rmtree(work / "store" / "experts", ignore_errors=True)
    t = time.time()
    res = run_stage_on("experts", base.outputs, ctx)
    wall = time.time() - t
    m = ctx.store.manifest(res.outputs[0])
    out = {"wall_s": wall, "goal_s": 720, "threads": torch.get_num_threads(), "settings": s.experts.identity(),
           "metrics": m.metrics, "input_metrics": ctx.store.manifest(base.outputs[0]).metrics,
           "timings": m.info["timings"], "dispatch_accuracy": m.info["dispatch_accuracy"],
           "objectives": {d: e["objective"] for d, e in m.info["experts"].items()}}
    OUT.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
