"""Benchmark: each cognate versus the base model on its own focus metric (held-out test split, test
phrasing families that no cognate trained on).

Runs the import and cognate stages of the configured profile on the default model (SmolLM2-135M-Instruct)
in a kept store (default .forge/bench-store, shared with bench/evomerge.py so the cognates are trained
once), prints base vs. cognate side by side with each accuracy's standard error and whether the gain is
beyond the noise (2 standard errors of the difference), and writes bench/results/cognate.json.
Usage: python bench/cognate.py [--store DIR] [--set section.key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.evals.suite import difference_noise, is_lower_better
from agent_forge_core.stages.runner import run_stage_on


def fmt(metrics: dict, name: str) -> str:
    se = metrics.get(f"{name}_se")
    return f"{metrics[name]:.3f}±{se:.3f}" if se is not None else f"{metrics[name]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=".forge/bench-store")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    s = load_settings(overrides=[f"store.url={args.store}/store", f"work_dir={args.store}/work", *args.overrides],
                      profile=args.profile)
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
        se = f"{metric}_se"
        noise = difference_noise(base_m[se], m[se]) if se in m else None
        rows.append({"cognate": info["focus"], "metric": metric, "base": b, "cognate_value": c,
                     "base_se": base_m.get(se), "cognate_se": m.get(se), "noise": noise,
                     "beyond_noise": None if noise is None else abs(c - b) > noise,
                     "ratio": c / b if b else None, "beats_base": better, "all_metrics": m})
    print(f"\n{'focus':<12}{'metric':<13}{'base':>14}{'cognate':>14}{'noise':>8}  beats base")
    for r in rows:
        noise = f"±{r['noise']:.3f}" if r["noise"] is not None else "-"
        verdict = f"{r['beats_base']}" + ("" if r["beyond_noise"] is None else
                                          " (beyond noise)" if r["beyond_noise"] else " (within noise)")
        print(f"{r['cognate']:<12}{r['metric']:<13}{fmt(base_m, r['metric']):>14}"
              f"{fmt(r['all_metrics'], r['metric']):>14}{noise:>8}  {verdict}")
    cols = ["perplexity", "perplexity_ood", "arithmetic", "recall", "instruction"]
    print(f"\n{'model':<12}" + "".join(f"{c:>16}" for c in cols))
    for name, m in [("base", base_m)] + [(r["cognate"], r["all_metrics"]) for r in rows]:
        print(f"{name:<12}" + "".join(f"{fmt(m, c):>16}" for c in cols))
    print(f"\nwall: import+eval {t1 - t0:.1f}s, cognate ({len(rows)} variants, train+eval) {t2 - t1:.1f}s "
          "(0 when reused from the store)")
    out = {"profile": s.profile, "model": s.model.source, "base_metrics": base_m, "rows": rows,
           "wall_s": {"import": t1 - t0, "cognate": t2 - t1},
           "config": {"cognate": s.cognate.model_dump(mode="json"), "eval": s.eval.model_dump(mode="json")}}
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/cognate.json").write_text(json.dumps(out, indent=2))
    print("wrote bench/results/cognate.json")


if __name__ == "__main__":
    main()
