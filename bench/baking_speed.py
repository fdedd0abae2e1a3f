"""Benchmark: what each of baking's speed measures buys on the default model, each side by side with the
plain way in one run (2 CPU cores):

- teacher log-probabilities of one bake's trajectories with the shared prompt read once (its cache reused
  by every batch) vs every prompted row read whole; the log-probabilities must agree;
- training steps with each batch run in length runs (`length_groups`, gradient accumulated) vs one padded
  batch; the losses must agree;
- sampling the trajectories under bfloat16 autocast (`decode_precision`) vs float32.

The retrieval bake is the case measured for the first two (its rows run from a short answer to retrieved
passages, and its prompt is the longest); the tool bake for sampling. Writes bench/results/baking_speed.json.
Usage: python bench/baking_speed.py [--source MODEL] [--trajectories 28] [--steps 6]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from agent_forge_core.agent.runtime import BUILTIN, Runtime
from agent_forge_core.agent.settings import AgentSettings, RuntimeSpec
from agent_forge_core.baking import train
from agent_forge_core.baking.prompts import PROMPTS
from agent_forge_core.baking.queries import training_queries
from agent_forge_core.baking.settings import BakingSettings
from agent_forge_core.baking.trajectories import sample
from agent_forge_core.model_io import load_model

OUT = Path(__file__).parent / "results" / "baking_speed.json"


def timed(fn):
    t0 = time.time()
    out = fn()
    return out, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="smollm2-135m-instruct")
    ap.add_argument("--trajectories", type=int, default=28)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--work", default=".forge/bench-speed")
    args = ap.parse_args()
    torch.manual_seed(0)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    model, tok = load_model(args.source)
    rt = Runtime.open(None, model, tok, AgentSettings(memory=f"{args.work}/memory.sqlite"),
                      spec=RuntimeSpec(tools=list(BUILTIN)))
    cfg = BakingSettings()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: dict = {"model": args.source, "trajectories": args.trajectories}

    qs = training_queries("tool", args.trajectories, cfg.other_share, 1, cfg.seed)
    runs = {}
    for precision in ("float32", "bfloat16"):
        with train.autocast(model.device, precision):
            trajs, runs[precision] = timed(lambda: sample(model, tok, rt, PROMPTS["tool"](rt), qs, cfg.temperature,
                                                          cfg.max_new_tokens, cfg.seed))
    out["sampling_tool"] = {"float32_s": runs["float32"], "bfloat16_s": runs["bfloat16"],
                            "speedup": runs["float32"] / runs["bfloat16"]}

    qs = training_queries("retrieval", args.trajectories, cfg.other_share, 1, cfg.seed)
    with train.autocast(model.device, "bfloat16"):
        trajs = sample(model, tok, rt, PROMPTS["retrieval"](rt), qs, cfg.temperature, cfg.max_new_tokens, cfg.seed)
    lengths = [len(t.student_ids()[0]) for t in trajs]
    out["retrieval_rows"] = {"prompt_tokens": len(trajs[0].prompt_ids), "row_tokens_min": min(lengths),
                             "row_tokens_max": max(lengths)}
    cached, cached_s = timed(lambda: train.teacher_logprobs(model, trajs, pad))
    whole, whole_s = timed(lambda: train.teacher_logprobs(model, trajs, pad, read_prompt_once=False))
    out["teacher_retrieval"] = {"prompt_read_once_s": cached_s, "whole_rows_s": whole_s, "speedup": whole_s / cached_s,
                                "max_abs_logprob_difference": max(float((a - b).abs().max()) for a, b in zip(cached, whole))}

    steps = {}
    for name, slack in (("padded_batch", float("inf")), ("length_runs", 1.25)):
        student, params = train.make_student(copy.deepcopy(model), "lora", cfg, cfg.seed)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        losses, t0 = [], time.time()
        for step in range(args.steps + 1):  # step 0 warms up and is not timed
            if step == 1:
                t0 = time.time()
            lo = step * cfg.batch_size % (len(trajs) - cfg.batch_size)
            opt.zero_grad(set_to_none=True)
            losses.append(train.accumulate(student, trajs[lo:lo + cfg.batch_size], cached[lo:lo + cfg.batch_size],
                                           pad, cfg.objective, cfg.train_precision, slack))
            opt.step()
        steps[name] = {"s": time.time() - t0, "losses": losses}
    out["train_steps_retrieval"] = {**steps, "steps": args.steps,
                                    "speedup": steps["padded_batch"]["s"] / steps["length_runs"]["s"]}
    for k in ("sampling_tool", "teacher_retrieval", "train_steps_retrieval"):
        v = out[k]
        print(f"{k:22s} speedup {v['speedup']:.2f}x  " + "  ".join(
            f"{n} {x if isinstance(x, float) else x['s']:.1f} s" for n, x in v.items()
            if n.endswith("_s") or isinstance(x, dict)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
