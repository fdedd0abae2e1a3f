"""Benchmark: the Cognate stage's LoRA training steps on the default model in each precision and attention kernel,
side by side in one run (2 CPU cores): float32 with sdpa (the stage's steps before `train_precision` and
`train_attention`), float32 eager, bfloat16 eager (the default) and bfloat16 sdpa.

Every variant trains its own copy of the model on the same batches of the quick profile's reasoning focus; the
variants step in turn (one step of each, then the next), so a drift in the machine's speed falls on all alike, and
step 0 warms up untimed. The losses are printed beside the times: bfloat16 changes them at its rounding, eager vs
sdpa at float rounding. Writes bench/results/cognate_speed.json.
Usage: python bench/cognate_speed.py [--source MODEL] [--steps 6]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import torch
from peft import get_peft_model

from agent_forge_core.cognate.settings import CognateSettings
from agent_forge_core.evals.settings import EvalSettings
from agent_forge_core.model_io import load_model
from agent_forge_core.training.attention import attention_kernel
from agent_forge_core.training.lora import lora_config
from agent_forge_core.training.precision import autocast
from agent_forge_core.training.sft_data import batches, focus_sequences, with_replay

OUT = Path(__file__).parent / "results" / "cognate_speed.json"
VARIANTS = {"float32_sdpa": ("float32", "sdpa"), "float32_eager": ("float32", "eager"),
            "bfloat16_eager": ("bfloat16", "eager"), "bfloat16_sdpa": ("bfloat16", "sdpa")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    cfg, ev = CognateSettings(), EvalSettings()
    model, tok = load_model(args.source)
    seqs = focus_sequences("reasoning", tok, (args.steps + 1) * cfg.batch_size, cfg.max_len, ev.shots, cfg.seed, ev.data)
    data = list(itertools.islice(batches(with_replay(seqs, tok, cfg.replay, cfg.max_len, cfg.seed + 99),
                                         cfg.batch_size, tok.pad_token_id, cfg.seed), args.steps + 1))
    runs = {}
    for name in VARIANTS:
        torch.manual_seed(cfg.seed)
        peft = get_peft_model(copy.deepcopy(model), lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout,
                                                                 cfg.lora.target_modules))
        peft.train()
        params = [p for p in peft.parameters() if p.requires_grad]
        runs[name] = {"model": peft, "params": params, "opt": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0),
                      "s": 0.0, "losses": []}
    for step, batch in enumerate(data):
        for name, (precision, kernel) in VARIANTS.items():
            r = runs[name]
            t0 = time.perf_counter()
            with attention_kernel(r["model"], kernel):
                with autocast(model.device, precision):
                    loss = r["model"](**batch).loss
                loss.backward()
            torch.nn.utils.clip_grad_norm_(r["params"], 1.0)
            r["opt"].step()
            r["opt"].zero_grad(set_to_none=True)
            r["s"] += (time.perf_counter() - t0) if step else 0.0
            r["losses"].append(round(loss.item(), 4))
    base = runs["float32_sdpa"]["s"]
    out = {"model": args.source, "timed_steps": args.steps, "batch": [cfg.batch_size, cfg.max_len],
           "variants": {n: {"s_per_step": r["s"] / args.steps, "speedup_vs_float32_sdpa": base / r["s"],
                            "losses": r["losses"]} for n, r in runs.items()}}
    for n, v in out["variants"].items():
        print(f"{n:15s} {v['s_per_step']:.2f} s/step  {v['speedup_vs_float32_sdpa']:.2f}x  losses {v['losses']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
