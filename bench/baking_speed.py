"""Benchmark: what each of baking's speed measures buys on the default model, each side by side with the
plain way in one run (2 CPU cores):

- teacher log-probabilities of one bake's trajectories with the shared prompt read once (its cache reused
  by every batch) vs every prompted row read whole; the log-probabilities must agree;
- training steps with each batch run in length runs (`length_groups`, gradient accumulated) vs one padded
  batch; the losses must agree;
- sampling the trajectories under bfloat16 autocast (`decode_precision`) vs float32;
- on a frozen model (as after a LoRA merge), sampling with the frozen weights' bfloat16 copies
  (`precision.bfloat16_weights`) vs autocast's per-call casts (the sampled ids must be the same), and
  training steps with the copies vs without (the losses must be the same);
- training steps with the eager attention kernel (`train_attention`) vs sdpa (losses equal to float rounding);
- a decoding chunk (8 rows x 30 tokens) with the output head on the last position only vs on every position.

The retrieval bake is the case measured for the first two (its rows run from a short answer to retrieved
passages, and its prompt is the longest); the tool bake for sampling. Writes bench/results/baking_speed.json.
Usage: python bench/baking_speed.py [--source MODEL] [--trajectories 28] [--steps 6]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

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

    frozen = copy.deepcopy(model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    sampled = {}
    for name, held in (("per_call_casts", None), ("bfloat16_copies", frozen)):
        with train.autocast(frozen.device, "bfloat16", held):
            sampled[name], runs[name] = timed(lambda: sample(frozen, tok, rt, PROMPTS["tool"](rt), qs,
                                                             cfg.temperature, cfg.max_new_tokens, cfg.seed))
    out["sampling_tool_frozen"] = {
        "per_call_casts_s": runs["per_call_casts"], "bfloat16_copies_s": runs["bfloat16_copies"],
        "speedup": runs["per_call_casts"] / runs["bfloat16_copies"],
        "same_ids": [t.answer_ids for t in sampled["per_call_casts"]] == [t.answer_ids for t in sampled["bfloat16_copies"]]}

    ids = torch.randint(0, len(tok), (8, 30))
    head = {}
    with torch.no_grad(), train.autocast(frozen.device, "bfloat16", frozen):
        for name, keep in (("every_position", 0), ("last_position", 1)):
            frozen(input_ids=ids, logits_to_keep=keep)  # warm-up
            _, head[name] = timed(lambda: [frozen(input_ids=ids, logits_to_keep=keep) for _ in range(5)])
    out["decode_chunk_8x30"] = {"every_position_s": head["every_position"] / 5, "last_position_s": head["last_position"] / 5,
                                "speedup": head["every_position"] / head["last_position"]}

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

    # the training variants step in turn (one step of each, then the next), so a drift in the machine's speed
    # falls on all of them alike; step 0 warms up and is not timed
    variants = {"padded_batch": (float("inf"), True, "eager"), "length_runs": (1.25, True, "eager"),
                "length_runs_per_call_casts": (1.25, False, "eager"), "length_runs_sdpa": (1.25, True, "sdpa")}
    steps = {}
    for name in variants:
        student, params = train.make_student(copy.deepcopy(model), "lora", cfg, cfg.seed)
        steps[name] = {"s": 0.0, "losses": [], "student": student, "opt": torch.optim.Adam(params, lr=cfg.lr)}
    for step in range(args.steps + 1):
        lo = step * cfg.batch_size % (len(trajs) - cfg.batch_size)
        for name, (slack, held, kernel) in variants.items():
            v = steps[name]
            t0 = time.time()
            v["opt"].zero_grad(set_to_none=True)
            with nullcontext() if held else mock.patch.object(train, "held_weights", lambda *_: nullcontext()):
                v["losses"].append(train.accumulate(v["student"], trajs[lo:lo + cfg.batch_size],
                                                    cached[lo:lo + cfg.batch_size], pad, cfg.objective,
                                                    cfg.train_precision, slack, kernel))
            v["opt"].step()
            v["s"] += (time.time() - t0) if step else 0.0
    steps = {n: {"s": v["s"], "losses": v["losses"]} for n, v in steps.items()}
    default = steps["length_runs"]["s"]
    out["train_steps_retrieval"] = {**steps, "steps": args.steps, "speedup": steps["padded_batch"]["s"] / default,
                                    "bfloat16_copies_speedup": steps["length_runs_per_call_casts"]["s"] / default,
                                    "eager_attention_speedup": steps["length_runs_sdpa"]["s"] / default}
    for k in ("sampling_tool", "sampling_tool_frozen", "decode_chunk_8x30", "teacher_retrieval", "train_steps_retrieval"):
        v = out[k]
        print(f"{k:22s} speedup {v['speedup']:.2f}x  " + "  ".join(
            f"{n} {x if isinstance(x, float) else x['s']:.1f} s" for n, x in v.items()
            if n.endswith("_s") or isinstance(x, dict)))
    t = out["train_steps_retrieval"]
    print(f"frozen sampling gave the same ids: {out['sampling_tool_frozen']['same_ids']}; training steps with the "
          f"copies {t['bfloat16_copies_speedup']:.2f}x, with eager attention vs sdpa {t['eager_attention_speedup']:.2f}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
