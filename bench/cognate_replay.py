"""Benchmark: how much natural-text replay a task cognate needs to keep its language modelling, measured on
the memory cognate of SmolLM2-135M-Instruct (the focus that drifts most: 30 steps drive its recall loss to
~0). For each variant: one LoRA fine-tune with the quick profile's budget (train split, train families),
then held-out perplexity (pydoc test topics and the out-of-domain text, 4096 tokens each) and recall accuracy
on the test families (n examples, 1 shot). Variants: replay 0, 0.10, 0.25, 0.50 of the training sequences,
and no replay at a 3x lower learning rate (the other lever). Writes bench/results/cognate_replay.json.
Usage: python bench/cognate_replay.py [--n 64] [--store DIR]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.evals.suite import greedy_complete, perplexity
from agent_forge_core.evals.tasks import get_task, with_shots
from agent_forge_core.evals.text import natural_text, ood_text
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.runner import run_stage_on
from agent_forge_core.training.lora import lora_config, merge_lora, train_lora
from agent_forge_core.training.sft_data import batches, focus_sequences, with_replay

VARIANTS = [("replay 0", 0.0, 1.0), ("replay 0.10", 0.10, 1.0), ("replay 0.25", 0.25, 1.0), ("replay 0.50", 0.50, 1.0),
            ("replay 0, lr x0.3", 0.0, 0.3)]


def measure(model, tok, n: int) -> dict:
    task = get_task("recall")
    items = with_shots(task, "test", n, 1, 1234)
    comp = greedy_complete(model, tok, [p for p, _ in items], 8, 16)
    return {"perplexity": perplexity(model, tok, natural_text("test"), 4096, 256),
            "perplexity_ood": perplexity(model, tok, ood_text("test"), 4096, 256),
            "recall": sum(task.check(c, ex) for c, (_, ex) in zip(comp, items)) / len(items)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--store", default=".forge/bench-store")
    args = ap.parse_args()
    s = load_settings(overrides=[f"store.url={args.store}/store", f"work_dir={args.store}/work"])
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    src, cfg = ctx.store.get(base), s.cognate
    model, tok = load_model(str(src))
    rows = [{"variant": "base model", **measure(model, tok, args.n)}]
    seed = cfg.seed + cfg.focuses.index("memory")
    for name, replay, lr_scale in VARIANTS:
        model, tok = load_model(str(src))
        seqs = focus_sequences("memory", tok, cfg.steps * cfg.batch_size, cfg.max_len, s.eval.shots, cfg.seed)
        seqs = with_replay(seqs, tok, replay, cfg.max_len, cfg.seed + 99)
        t0 = time.time()
        peft, stats = train_lora(model, lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules),
                                 batches(seqs, cfg.batch_size, tok.pad_token_id, seed), cfg.steps, cfg.lr * lr_scale,
                                 cfg.warmup, None, cfg.seed)
        merged = merge_lora(peft)
        rows.append({"variant": name, "train_s": time.time() - t0, "last_loss": stats.last_loss, **measure(merged, tok, args.n)})
        r = rows[-1]
        print(f"{name:<20} ppl {r['perplexity']:7.2f}  ppl_ood {r['perplexity_ood']:7.2f}  recall {r['recall']:.3f}  "
              f"train {r['train_s']:.0f}s", flush=True)
    b = rows[0]
    print(f"{'base model':<20} ppl {b['perplexity']:7.2f}  ppl_ood {b['perplexity_ood']:7.2f}  recall {b['recall']:.3f}")
    out = Path("bench/results/cognate_replay.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "rows": rows, "cognate": cfg.model_dump(mode="json")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
