"""Benchmark: BitNet b1.58 on the default model (SmolLM2-135M-Instruct).

Side by side, in one run: (a) the float model, (b) post-training ternarization (no training),
(c) QAT with the quick profile's budget, (d) QAT with a longer budget; perplexity and task
accuracies on the held-out split; size on disk and bits per weight; packed-inference forward speed
versus float on this CPU. Writes bench/results/bitnet.json.
Usage: python bench/bitnet.py [--long-steps 240] [--set section.key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.runner import run_stage_on

METRICS = ("perplexity", "arithmetic", "recall", "instruction")


def forward_ms(model, ids, repeats: int = 5) -> float:
    times = []
    with torch.no_grad():
        model(ids)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--long-steps", type=int, default=240)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows, out = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        # gates off: the benchmark reports the numbers whatever they are
        common = [f"store.url={tmp}/store", f"work_dir={tmp}/work", "cognate.enabled=false", "evomerge.enabled=false", "bitnet.enabled=true",
                  "bitnet.gates={}"]
        s = load_settings(overrides=[*common, *args.overrides])
        ctx = make_context(s)
        t0 = time.time()
        base = run_stage_on("import", [], ctx)
        (base_key,) = base.outputs
        rows["(a) float"] = base.metrics[base_key]
        t1 = time.time()
        quick = run_stage_on("bitnet", [base_key], ctx)
        (qkey,) = quick.outputs
        rows["(b) PTQ ternary"] = quick.info[qkey]["ptq_metrics"]
        rows[f"(c) QAT {s.bitnet.steps} steps"] = quick.metrics[qkey]
        t2 = time.time()
        long_overrides = [*common, *args.overrides, f"bitnet.steps={args.long_steps}",
                          f"bitnet.warmup={min(args.long_steps, 3 * s.bitnet.warmup)}", "bitnet.measure_ptq=false"]
        s_long = load_settings(overrides=long_overrides)
        long = run_stage_on("bitnet", [base_key], make_context(s_long))
        (lkey,) = long.outputs
        rows[f"(d) QAT {args.long_steps} steps"] = long.metrics[lkey]
        t3 = time.time()
        base_dir, q_dir = ctx.store.get(base_key), ctx.store.get(qkey)
        sizes = {"float": (base_dir / "model.safetensors").stat().st_size,
                 "bitnet": (q_dir / "model.safetensors").stat().st_size}
        float_model, tok = load_model(str(base_dir))
        packed_model, _ = load_model(str(q_dir))
        ids = tok(" ".join(["The quick brown fox jumps over the lazy dog."] * 80), return_tensors="pt").input_ids[:, :512]
        ids = ids.repeat(2, 1)
        speed = {"float_ms": forward_ms(float_model, ids), "packed_ms": forward_ms(packed_model, ids)}
        bits = quick.info[qkey]["bits"]
        wall = {"import": t1 - t0, "quick_qat_incl_evals": t2 - t1, "long_qat_incl_eval": t3 - t2}
        out = {"rows": rows, "sizes_bytes": sizes, "bits": bits, "speed": speed, "wall_s": wall,
               "train": {"quick": quick.info[qkey]["train"], "long": long.info[lkey]["train"]},
               "config": s.bitnet.model_dump()}
    print(f"\n{'model':<24}" + "".join(f"{m:>13}" for m in METRICS))
    for name, m in rows.items():
        print(f"{name:<24}" + "".join(f"{m[k]:>13.4f}" for k in METRICS))
    a = rows["(a) float"]["perplexity"]
    for name, m in rows.items():
        print(f"perplexity ratio vs float, {name}: {m['perplexity'] / a:.2f}x")
    print(f"\nsize on disk: float {sizes['float'] / 1e6:.1f} MB, bitnet {sizes['bitnet'] / 1e6:.1f} MB "
          f"({sizes['bitnet'] / sizes['float']:.3f}x)")
    print(f"bits/weight: ternary layers {bits['bits_per_weight_ternary_layers']:.3f}, whole model "
          f"{bits['bits_per_weight_model']:.3f} (embeddings/head/norms in float32)")
    print(f"forward 2x512 tokens on CPU: float {speed['float_ms']:.0f} ms, packed {speed['packed_ms']:.0f} ms "
          f"({speed['packed_ms'] / speed['float_ms']:.2f}x)")
    print("wall: " + ", ".join(f"{k} {v:.0f}s" for k, v in wall.items()))
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/bitnet.json").write_text(json.dumps(out, indent=2))
    print("wrote bench/results/bitnet.json")


if __name__ == "__main__":
    main()
