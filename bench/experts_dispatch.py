"""Benchmark: the first pass of Transformer²'s two-pass inference on the default model, every dispatcher side by
side on the same prompts (issue 18): prompt (the model names the domain), cls_expert trained with each objective
(nll: the cross-entropy of the gold label; reinforce: the reference's ±1 rewards on the greedy label), and the
linear probe. --n test-split prompts per domain (5 domains) plus --n windows of text of no domain (held-out chat:
the share each dispatcher leaves on the base weights). Training uses train splits only; the classification
experts get the same steps, batch, lr and prompts.
Writes bench/results/experts_dispatch.json.
Usage: python bench/experts_dispatch.py [--n 64] [--steps 16] [--batch 16]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from agent_forge_core.config import load_settings
from agent_forge_core.experts.dispatch import (LinearProbe, dispatch_accuracy, linear_router, pooled_features,
                                              prompt_router, train_classifier)
from agent_forge_core.experts.domains import get_domain, other_texts
from agent_forge_core.experts.svf import SVF
from agent_forge_core.model_io import load_model

OUT = Path(__file__).parent / "results" / "experts_dispatch.json"
DOMAINS = ["arithmetic", "recall", "instruction", "language", "driving"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = load_settings(overrides=[f"model.source={args.source}", "experts.enabled=true", f"experts.train.steps={args.steps}",
                                 f"experts.train.batch_size={args.batch}", "experts.dispatch_train=48"])
    cfg, ev = s.experts, s.eval
    model, tok = load_model(args.source)
    model.eval()
    svf = SVF(model, cfg.train.target)
    domains = [get_domain(d, ev.data) for d in DOMAINS]
    test_q = {d.name: d.queries("test", args.n, ev.shots, cfg.seed) for d in domains}
    others = other_texts(args.n, seed=cfg.seed)
    train_q = {d.name: d.queries("train", cfg.dispatch_train, ev.shots, cfg.seed) for d in domains}
    res: dict = {}

    def timed(name, fn):
        t = time.time()
        res[name] = fn()
        res[name]["seconds"] = time.time() - t
        print(name, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res[name].items()
                                if k != "history"}), flush=True)

    def linear():
        labels = torch.tensor([i for i, d in enumerate(DOMAINS) for _ in train_q[d]])
        probe = LinearProbe.fit(pooled_features(model, tok, [q for d in DOMAINS for q in train_q[d]]), labels,
                                len(DOMAINS), margin=cfg.other_margin or None)
        return {"accuracy": dispatch_accuracy(linear_router(model, tok, DOMAINS, probe), test_q, others)}

    timed("linear", linear)
    timed("prompt", lambda: {"accuracy": dispatch_accuracy(prompt_router(model, tok, DOMAINS), test_q, others)})
    for objective in ("nll", "reinforce"):
        def cls(objective=objective):
            c = cfg.model_copy(update={"cls_objective": objective})
            e, hist = train_classifier(model, tok, svf, domains, c, ev.shots, cfg.seed + 101)
            return {"meta": e.meta, "history": hist,
                    "accuracy": dispatch_accuracy(prompt_router(model, tok, DOMAINS, svf, e.z), test_q, others)}
        timed(f"cls_expert_{objective}", cls)
    OUT.write_text(json.dumps({"source": args.source, "n_per_domain": args.n, "domains": DOMAINS,
                               "train_prompts_per_domain": cfg.dispatch_train, "steps": args.steps,
                               "batch": args.batch, "lr": cfg.train.lr, "results": res}, indent=1))


if __name__ == "__main__":
    main()
