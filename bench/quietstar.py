"""Benchmark: Quiet-STaR against matched-compute controls on the default model (SmolLM2-135M-Instruct).

Three runs from the same model with the same steps, data, batches and learning-rate schedule:
- quietstar: sampled thoughts, mixing head, REINFORCE (the stage's quick profile);
- pause: the null-thought control: every thought token is the pad token, no REINFORCE (same passes, same head);
- plain: no thoughts: an ordinary full fine-tune on the same windows (cross-entropy);
- no_rl (optional): sampled thoughts and the head, REINFORCE off (policy_beta 0): what the policy term does.
Measured on held-out data (test split): NLL of held-out pydoc text and on its hard tokens (the 10% with
the highest NLL under the untrained model, one fixed set for every run), arithmetic target NLL, answer NLL
and teacher-forced answer probability (the paper's "accuracy"), greedy arithmetic accuracy on --n examples,
each in plain mode and, for the thought runs, in thought mode; the mean mixing weight and the share of
positive rewards during training. Writes bench/results/quietstar.json.
Usage: python bench/quietstar.py [--source MODEL] [--n 128] [--set quietstar.key=value ...]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from agent_forge_core.config import load_settings
from agent_forge_core.evals.suite import greedy_complete, standard_error
from agent_forge_core.evals.tasks import get_task, with_shots
from agent_forge_core.model_io import load_model
from agent_forge_core.quietstar.generate import thought_completer
from agent_forge_core.quietstar.loss import token_nll
from agent_forge_core.quietstar.metrics import (arithmetic_sequences, arithmetic_summary, right_padded, text_windows,
                                               token_scores)
from agent_forge_core.quietstar.stage import training_sequences
from agent_forge_core.quietstar.state import ThoughtState
from agent_forge_core.quietstar.tokens import prepare_tokens
from agent_forge_core.quietstar.train import lr_at, train_quietstar
from agent_forge_core.training.sft_data import batches

OUT = Path(__file__).parent / "results" / "quietstar.json"


@torch.no_grad()
def plain_scores(model, seqs, pad, batch=8):
    out = []
    for b in range(0, len(seqs), batch):
        chunk = seqs[b : b + batch]
        ids, mask = right_padded(chunk, pad, model.device)
        nll, _ = token_nll(model(input_ids=ids, attention_mask=mask).logits, ids, mask, 0)
        out += [nll[r, : len(s) - 1].tolist() for r, s in enumerate(chunk)]
    return out


def train_plain(model, data, cfg):
    """The no-thought control: cross-entropy on the same batches, same optimizer and schedule."""
    torch.manual_seed(cfg.seed)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    losses = []
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.warmup, cfg.lr)
        b = next(data)
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return [{"step": i, "loss_base": v} for i, v in enumerate(losses)]


def accuracy(completions, items, task):
    correct = sum(task.check(c, ex) for c, (_, ex) in zip(completions, items))
    return correct / len(items), standard_error(correct, len(items))


def measure(name, model, tok, state, cfg, ev, windows, arith, hard, items, task, thought_acc_n):
    pad = tok.pad_token_id
    t0 = time.time()
    row = {"run": name}
    seqs = [s for s, _ in arith]
    spans = [sp for _, sp in arith]
    if state is None:
        text, ar = plain_scores(model, windows, pad), plain_scores(model, seqs, pad)
        modes = {"": (text, ar)}
    else:
        ts, as_ = token_scores(model, state, windows, cfg.n_thought, pad), token_scores(model, state, seqs, cfg.n_thought, pad)
        modes = {"": ([b for b, _, _ in ts], [b for b, _, _ in as_]), "_thought": ([m for _, m, _ in ts], [m for _, m, _ in as_])}
        ws = [v for _, _, w in ts for v in w]
        row["mix_mean"] = sum(ws) / len(ws)
    for suffix, (text, ar) in modes.items():
        flat = [v for seq in text for v in seq]
        row[f"text_nll{suffix}"] = sum(flat) / len(flat)
        row[f"text_hard_nll{suffix}"] = sum(flat[i] for i in hard) / len(hard)
        row.update(arithmetic_summary(spans, ar, suffix))
    prompts = [p for p, _ in items]
    row["arithmetic"], row["arithmetic_se"] = accuracy(greedy_complete(model, tok, prompts, ev.max_new_tokens, ev.batch_size), items, task)
    if state is not None and thought_acc_n:
        sub = items[:thought_acc_n]
        done = thought_completer(model, state, cfg.n_thought, ev.max_new_tokens)(model, tok, [p for p, _ in sub])
        row["arithmetic_thought"], row["arithmetic_thought_se"] = accuracy(done, sub, task)
        row["arithmetic_thought_n"] = len(sub)
    row["measure_s"] = round(time.time() - t0, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=128, help="arithmetic test examples (NLLs and plain accuracy)")
    ap.add_argument("--thought-accuracy-n", type=int, default=128, help="examples for thought-mode accuracy (0: skip)")
    ap.add_argument("--text-tokens", type=int, default=4096)
    ap.add_argument("--runs", default="quietstar,pause,plain", help="any of quietstar,pause,plain,no_rl")
    ap.add_argument("--append", action="store_true", help="add the runs to the rows already in the results file")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    torch.set_num_threads(2)
    s = load_settings(overrides=["quietstar.enabled=true", *args.overrides])
    cfg, ev = s.quietstar, s.eval
    model, tok = load_model(args.source)
    windows = text_windows(tok, "test", args.text_tokens)
    arith = arithmetic_sequences(tok, ev, args.n)
    task = get_task("arithmetic", ev.data)
    items = with_shots(task, "test", args.n, ev.shots, ev.seed)
    base_text = [v for seq in plain_scores(model, windows, tok.pad_token_id) for v in seq]
    k = max(1, len(base_text) // 10)
    hard = sorted(range(len(base_text)), key=lambda i: -base_text[i])[:k]
    if args.append:
        rows = [r for r in json.loads(OUT.read_text())["rows"] if r["run"] not in args.runs.split(",")]
    else:
        rows = [measure("untrained", model, tok, None, cfg, ev, windows, arith, hard, items, task, 0)]
    del model
    seqs = training_sequences(cfg, tok, ev.shots, ev.data)
    for run in args.runs.split(","):
        model, tok = load_model(args.source)
        t0 = time.time()
        if run == "plain":
            state = None
            hist = train_plain(model, batches(seqs, cfg.batch_size, tok.pad_token_id, cfg.seed), cfg)
        else:
            rcfg = cfg.model_copy(update={"thoughts": "pause" if run == "pause" else "sampled",
                                          "policy_beta": 0.0 if run == "no_rl" else cfg.policy_beta})
            tokens = prepare_tokens(model, tok)
            torch.manual_seed(cfg.seed)
            state = ThoughtState.initial(model, tok, tokens, cfg.embedding_scale)
            hist = train_quietstar(model, state, batches(seqs, cfg.batch_size, tok.pad_token_id, cfg.seed), rcfg,
                                   tok.pad_token_id, progress=lambda f, m: print(f"  {run}: {m}", flush=True))
            state.write_embeddings(model)
        train_s = time.time() - t0
        row = measure(run, model, tok, state, cfg, ev, windows, arith, hard, items, task,
                      args.thought_accuracy_n if run == "quietstar" else 0)
        row["train_s"] = round(train_s, 1)
        row["train_s_per_step"] = round(train_s / cfg.steps, 2)
        shares = [h["reward_positive_share"] for h in hist if "reward_positive_share" in h]
        if shares:
            row["reward_positive_share"] = sum(shares) / len(shares)
            norms = [(h["grad_norm_nll"], h["grad_norm_policy"]) for h in hist if "grad_norm_policy" in h]
            row["grad_norm_nll"], row["grad_norm_policy"] = (sum(x[i] for x in norms) / len(norms) for i in (0, 1))
        row["first_loss"] = hist[0]["loss_base"]
        row["last_loss"] = sum(h["loss_base"] for h in hist[-3:]) / len(hist[-3:])
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
    keys = ["text_nll", "text_hard_nll", "arithmetic_nll", "answer_nll", "answer_prob", "arithmetic"]
    print(f"\n{'run':10s} " + " ".join(f"{k:>14s}" for k in keys))
    for r in rows:
        print(f"{r['run']:10s} " + " ".join(f"{r[k]:14.4f}" for k in keys))
        if "text_nll_thought" in r:
            print(f"{'  thought':10s} " + " ".join(f"{r.get(k + '_thought', float('nan')):14.4f}" for k in keys))
    OUT.write_text(json.dumps({"source": args.source, "settings": cfg.identity(), "n": args.n,
                               "text_tokens": args.text_tokens, "hard_tokens": len(hard), "rows": rows,
                               "torch_threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
