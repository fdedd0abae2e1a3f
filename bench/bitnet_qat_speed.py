"""Benchmark: the wall time of a BitNet QAT step on the default model (2 CPU cores), in the stage's recipe
(projections of layers 1-28 ternary with per-channel scales, lambda 1, distillation from the float model, batch 8
of the quick mixture's sequences), with each step setting side by side in one run:
- float32 with transformers' sdpa attention (the stage's steps until `bitnet.train_precision` existed);
- bfloat16 autocast (`bitnet.train_precision`: the student's and the teacher's forward; the teacher's frozen
  weights held as bfloat16 copies, `training/precision.py`) with sdpa, and with the eager kernel
  (`bitnet.train_attention`, `training/attention.py`).
Each variant trains its own copy of the model from the same start on the same batches, a step of each in turn
(so a drift in the machine's speed falls on all alike; the first step warms up and is not timed); the losses of
the first step show what bfloat16 changes in the loss. Writes bench/results/bitnet_qat_speed.json (recorded with
the equal split of the four focuses, before `bitnet.data_share={language: 3}` became the default).
Usage: python bench/bitnet_qat_speed.py [--steps 3]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from agent_forge_core.bitnet.convert import convert, set_lambda
from agent_forge_core.bitnet.settings import BitnetSettings
from agent_forge_core.bitnet.stage import qat_sequences
from agent_forge_core.config import load_settings
from agent_forge_core.model_io import load_model
from agent_forge_core.training.attention import attention_kernel
from agent_forge_core.training.distill import distilled_loss
from agent_forge_core.training.precision import autocast, held_weights
from agent_forge_core.training.sft_data import batches

OUT = Path(__file__).parent / "results" / "bitnet_qat_speed.json"
VARIANTS = {"float32_sdpa": ("float32", "sdpa"), "bfloat16_sdpa": ("bfloat16", "sdpa"),
            "bfloat16_eager": ("bfloat16", "eager")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    cfg = BitnetSettings()
    teacher, tok = load_model(args.source)
    teacher.eval().requires_grad_(False)
    base = copy.deepcopy(teacher)
    convert(base, cfg.modules, cfg.act_bits, cfg.norm, per_channel=cfg.scales == "channel",
            float_layers=cfg.float_layers)
    set_lambda(base, 1.0)
    base.requires_grad_(True)
    seqs = qat_sequences(tok, cfg, (args.steps + 1) * cfg.batch_size, load_settings().eval.shots)
    data = list(zip(range(args.steps + 1), batches(seqs, cfg.batch_size, tok.pad_token_id, cfg.seed)))
    loss_fn = distilled_loss(teacher, cfg.distill)
    runs = {}
    for name in VARIANTS:
        model = copy.deepcopy(base).train()
        params = [p for p in model.parameters() if p.requires_grad]
        runs[name] = {"model": model, "opt": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0), "params": params,
                      "s": 0.0, "losses": []}
    for step, batch in data:
        for name, (precision, kernel) in VARIANTS.items():
            r = runs[name]
            t0 = time.perf_counter()
            # the teacher's copies are made inside each timed step (the variants share the teacher), where the
            # stage makes them once per run: the bfloat16 times include a cost the stage does not pay
            with held_weights(teacher, precision), attention_kernel(r["model"], kernel):
                with autocast("cpu", precision):
                    loss = loss_fn(r["model"], batch)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(r["params"], 1.0)
            r["opt"].step()
            r["opt"].zero_grad(set_to_none=True)
            r["losses"].append(loss.item())
            r["s"] += time.perf_counter() - t0 if step else 0.0
    tokens = sum(int(b["attention_mask"].sum()) for _, b in data[1:])
    out = {"model": args.source, "timed_steps": args.steps, "batch_size": cfg.batch_size, "max_len": cfg.max_len,
           "tokens_timed": tokens, "threads": torch.get_num_threads(), "variants": {}}
    ref = runs["float32_sdpa"]["s"]
    for name, r in runs.items():
        out["variants"][name] = {"s_per_step": r["s"] / args.steps, "tokens_per_s": tokens / r["s"],
                                 "speedup_vs_float32_sdpa": ref / r["s"], "losses": r["losses"]}
        print(f"{name:15s} {r['s'] / args.steps:6.2f} s/step  {ref / r['s']:.2f}x  losses "
              + " ".join(f"{x:.3f}" for x in r["losses"]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
