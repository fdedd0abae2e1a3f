"""Benchmark: the baking stage on the default model (SmolLM2-135M-Instruct), all four bakes in order.

Runs the stage itself (import -> baking) and reports what its probes measured, per bake, in three
conditions: the input without the prompt (base), with it (prompted), the baked model without it (baked);
the recovery ratio (baked - base) / (prompted - base); the forgetting matrix (each earlier bake's primary
metric after each later bake); the half-baking KL curves (training and held-out); the eval suite of the
input and of the baked agent (its runtime on); wall time per phase, baking's own (baking_s) and the rest
(rest_s: loading, saving, the runner's eval suite with the runtime on, publishing). Each rate comes with its standard
error (n = --n per condition). The stage runs with its gates opened (a failed gate would discard what was
measured); the JSON records whether the configured gates pass. Writes bench/results/baking.json (a --tag other than "default" is stored
beside it under that name).
Usage: python bench/baking.py [--n 128] [--tag default] [--set baking.key=value ...]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.evals.gates import check_gates
from agent_forge_core.evals.suite import standard_error
from agent_forge_core.stages.runner import run_stage_on

OUT = Path(__file__).parent / "results" / "baking.json"


def with_se(metrics: dict[str, float], n: int) -> dict[str, dict]:
    return {k: {"value": v, "se": standard_error(round(v * n), n) if math.isfinite(v) else None}
            for k, v in metrics.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128, help="probe examples per condition")
    ap.add_argument("--store", default=".forge/bench-store")
    ap.add_argument("--tag", default="default")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    torch.manual_seed(0)
    common = [f"store.url={args.store}/store", f"work_dir={args.store}/work", "baking.enabled=true",
              f"baking.probe_examples={args.n}", "baking.forgetting_turns=[0,2,4,8]", *args.overrides]
    gates = load_settings(overrides=common).baking.gates
    s = load_settings(overrides=[*common, *(f"baking.gates.{m}=1000" for m in gates)])
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    t0 = time.time()
    res = run_stage_on("baking", [base], ctx)
    wall = time.time() - t0
    (key,) = res.outputs
    info = res.info[key]
    history = json.loads((ctx.store.get(key) / "baking_history.json").read_text())["history"]
    out = {
        "model": s.model.source, "n_per_condition": args.n, "settings": s.baking.identity(), "key": key,
        "reused": res.reused, "stage_wall_s": wall, "student": info["student"],
        "probes": {b: {c: with_se(m, args.n) for c, m in conds.items()} for b, conds in info["probes"].items()},
        "recovery": info["recovery"], "primary": info["primary"], "forgetting": info["forgetting"],
        "curves": {b: {"train_loss": [h["loss"] for h in v["steps"]], "heldout_kl": v["heldout"]} for b, v in history.items()},
        "phase_s": {b: {k: v[k] for k in ("sampling_s", "train_s", "probe_s", "wall_s") if k in v}
                    for b, v in history.items()},
        "input_s": info["input_s"],
        "trajectory_examples": {b: v["examples"] for b, v in history.items()},
        "suite": {"input": ctx.store.manifest(base).metrics, "baked_with_runtime": res.metrics[key]},
        "gates": [g.as_dict() for g in check_gates(ctx.store.manifest(base).metrics, res.metrics[key], gates)],
        "departures": info["departures"],
    }
    # baking's own work (prompts, input probes, the bakes with their probes) and the rest: loading and saving
    # the model, the runner's eval suite with the runtime on, gates, publishing
    out["baking_s"] = sum(info["input_s"].values()) + sum(v["wall_s"] for v in history.values())
    out["rest_s"] = wall - out["baking_s"]
    for b, conds in out["probes"].items():
        p = info["primary"][b]
        print(f"{b:10s} {p:18s} " + "  ".join(f"{c} {v[p]['value']:.3f}±{v[p]['se'] or 0:.3f}" for c, v in conds.items())
              + f"  recovery {info['recovery'][b][p]}")
    print("forgetting", json.dumps(info["forgetting"]))
    print(f"stage wall {wall:.0f} s: baking {out['baking_s']:.0f} s, the rest (load, save, eval suite, publish) "
          f"{out['rest_s']:.0f} s")
    path = OUT if args.tag == "default" else OUT.with_name(f"baking_{args.tag}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
