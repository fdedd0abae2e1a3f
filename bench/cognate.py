"""Benchmark: each cognate versus the base model on its own focus metric (held-out test split).

Runs the import and cognate stages of the configured profile on the default model (SmolLM2-135M-Instruct)
in a fresh temporary store, prints base vs. cognate side by side, and writes bench/results/cognate.json.
Usage: python bench/cognate.py [--set section.key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.evals.suite import is_lower_better
from agent_forge_core.stages.runner import run_stage_on


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        s = load_settings(overrides=[f"store.url={tmp}/store", f"work_dir={tmp}/work", *args.overrides], profile=args.profile)
        ctx = make_context(s)
        t0 = time.time()
        base = run_stage_on("import", [], ctx)
        t1 = time.time()
        cog = run_stage_on("cognate", base.outputs, ctx)
        t2 = time.time()
    base_m = base.metrics[base.outputs[0]]
    rows = []
    for key in cog.outputs:
        info, m = cog.info[key], cog.metrics[key]
        metric = info["focus_metric"]
        b, c = base_m[metric], m[metric]
        better = c < b if is_lower_better(metric) else c > b
        rows.append({"cognate": info["focus"], "metric": metric, "base": b, "cognate_value": c,
                     "ratio": c / b if b else None, "beats_base": better, "all_metrics": m})
    print(f"\n{'focus':<12}{'metric':<14}{'base':>10}{'cognate':>10}{'ratio':>8}  beats base")
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        print(f"{r['cognate']:<12}{r['metric']:<14}{r['base']:>10.4f}{r['cognate_value']:>10.4f}{ratio:>8}  {r['beats_base']}")
    print(f"\nwall: import+eval {t1 - t0:.1f}s, cognate ({len(rows)} variants, train+eval) {t2 - t1:.1f}s")
    out = {"profile": s.profile, "model": s.model.source, "base_metrics": base_m, "rows": rows,
           "wall_s": {"import": t1 - t0, "cognate": t2 - t1},
           "config": {"cognate": s.cognate.model_dump(), "eval": s.eval.model_dump()}}
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/cognate.json").write_text(json.dumps(out, indent=2))
    print("wrote bench/results/cognate.json")


if __name__ == "__main__":
    main()
