"""Benchmark: the eval suite (quick profile) on the default model with each batch's prompt forward shared by the
answers and the target NLLs (`evals.suite.answer_and_score`, the default) against decoding and scoring in separate
passes (as before; the same as a `complete` callable that decodes greedily), side by side in one run (2 CPU cores),
alternating so that a drift in the machine's speed falls on both. The metrics must agree: the accuracies exactly,
the NLLs to float rounding. Writes bench/results/eval_speed.json.
Usage: python bench/eval_speed.py [--source MODEL] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agent_forge_core.evals.settings import EvalSettings
from agent_forge_core.evals.suite import evaluate, greedy_complete
from agent_forge_core.model_io import load_model

OUT = Path(__file__).parent / "results" / "eval_speed.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = EvalSettings()
    model, tok = load_model(args.source)

    def separate(m, t, prompts):
        return greedy_complete(m, t, prompts, cfg.max_new_tokens, cfg.batch_size)

    ways = {"separate_passes": {"complete": separate}, "shared_prefill": {}}
    times = {w: [] for w in ways}
    metrics = {}
    for _ in range(args.repeats):
        for way, kw in ways.items():
            t0 = time.perf_counter()
            metrics[way] = evaluate(model, tok, cfg, **kw)
            times[way].append(time.perf_counter() - t0)
    a, b = metrics["separate_passes"], metrics["shared_prefill"]
    out = {"model": args.source, "repeats": args.repeats, "seconds": times,
           "speedup": sum(times["separate_passes"]) / sum(times["shared_prefill"]),
           "same_accuracies": all(a[k] == b[k] for k in a if not k.endswith("_nll") and not k.startswith("perplexity")),
           "max_relative_nll_difference": max(abs(a[k] - b[k]) / abs(a[k]) for k in a if k.endswith("_nll")),
           "metrics": b}
    print(f"separate passes {min(times['separate_passes']):.1f} s, shared prefill {min(times['shared_prefill']):.1f} s "
          f"(best of {args.repeats}); speedup {out['speedup']:.2f}x; same accuracies {out['same_accuracies']}; "
          f"largest relative NLL difference {out['max_relative_nll_difference']:.1e}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
