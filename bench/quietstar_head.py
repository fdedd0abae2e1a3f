"""Benchmark: does thought mode beat plain mode at the quick budget, and is the mixing head's learning rate
what holds it back?

The stage's quick profile (8 steps) is trained from the chain's input (`--key`: the EvoMerge winner in a store;
without it the default model) once per head learning rate (`quietstar.head_lr`; none = the reference's single lr), and thought mode is measured
against plain mode on the same held-out tokens (`quietstar.metrics.thought_metrics`, test split): mean
change in NLL with its paired standard error, the hardest 10% of tokens, arithmetic target and answer NLL,
the mean mixing weight. Writes bench/results/quietstar_head.json.
Usage: python bench/quietstar_head.py [--key evomerge-... [--store .forge/store]] [--head-lr none,1e-4,1e-3,1e-2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from agent_forge_core.config import load_settings
from agent_forge_core.model_io import load_model
from agent_forge_core.quietstar.metrics import thought_metrics
from agent_forge_core.quietstar.stage import training_sequences
from agent_forge_core.quietstar.state import ThoughtState
from agent_forge_core.quietstar.tokens import prepare_tokens
from agent_forge_core.quietstar.train import train_quietstar
from agent_forge_core.store import CheckpointStore
from agent_forge_core.training.sft_data import batches

OUT = Path(__file__).parent / "results" / "quietstar_head.json"
SHOWN = ("text_nll", "text_hard_nll", "arithmetic_nll", "answer_nll")


def run(folder: str, head_lr: str, n: int, text_tokens: int, overrides: list[str]) -> dict:
    sets = overrides + ([] if head_lr == "none" else [f"quietstar.head_lr={head_lr}"])
    s = load_settings(overrides=sets, profile="quick")
    cfg, ev = s.quietstar, s.eval
    model, tok = load_model(folder)
    tokens = prepare_tokens(model, tok)
    torch.manual_seed(cfg.seed)
    state = ThoughtState.initial(model, tok, tokens, cfg.embedding_scale)
    seqs = training_sequences(cfg, tok, ev.shots, ev.data)
    t0 = time.time()
    train_quietstar(model, state, batches(seqs, cfg.batch_size, tok.pad_token_id, cfg.seed), cfg,
                    tok.pad_token_id)
    train_s = time.time() - t0
    state.write_embeddings(model)
    m = thought_metrics(model, state, tok, ev, cfg.n_thought, n, text_tokens)
    return {"head_lr": None if head_lr == "none" else float(head_lr), "steps": cfg.steps, "train_s": round(train_s, 1),
            **{f"{k}_change": m[f"{k}_thought"] - m[k] for k in SHOWN}, **m}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="smollm2-135m-instruct")
    ap.add_argument("--key", help="a stored checkpoint to train from instead (the chain's input: the EvoMerge winner)")
    ap.add_argument("--store", default=".forge/store")
    ap.add_argument("--head-lr", default="none,1e-4,1e-3,1e-2")
    ap.add_argument("--n", type=int, default=32, help="arithmetic test examples")
    ap.add_argument("--text-tokens", type=int, default=2048)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    folder = str(CheckpointStore(args.store).get(args.key)) if args.key else args.source
    rows = []
    for lr in args.head_lr.split(","):
        rows.append(run(folder, lr, args.n, args.text_tokens, args.overrides))
        r = rows[-1]
        print(f"head_lr {lr}: text NLL {r['text_nll']:.4f} -> {r['text_nll_thought']:.4f} "
              f"({r['text_nll_change']:+.4f} ± {r['text_nll_change_se']:.4f}), hard tokens {r['text_hard_nll_change']:+.3f}, "
              f"answer NLL {r['answer_nll_change']:+.4f}, mean w {r['mix_mean']:.3f}", flush=True)
    OUT.write_text(json.dumps({"source": args.key or args.source, "n": args.n, "text_tokens": args.text_tokens,
                               "overrides": args.overrides, "rows": rows}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
