"""What Quiet-STaR changes, measured teacher-forced on held-out data (test split), base vs thought mode.

For every scored token: NLL⁰ from the base pass and NLLᵐⁱˣ from the mixed prediction after a greedy
thought (n_talk = 1, one pass). Reported: mean NLL of held-out text and of arithmetic targets (worked
steps and answer), the same on *hard tokens* (the 10% with the highest NLL⁰, as the paper reports its
gains there), on the final answer's tokens, the teacher-forced answer probability Π p(answer tokens) (the
paper's "accuracy" for GSM8K/CommonsenseQA is this probability for a direct answer; ours is conditioned on
the worked steps, which the task's format puts first), the share of tokens a thought helps
(NLLᵐⁱˣ < NLL⁰), the paired standard error of the mean change NLLᵐⁱˣ − NLL⁰ (tokens as independent
draws), and the mixing weight w (mean, 10/50/90% quantiles).
"""
from __future__ import annotations

import math

import torch

from ..evals.tasks import get_task, with_shots
from ..evals.text import natural_text
from .engine import think
from .loss import token_nll
from .state import ThoughtState

ANSWER_MARK = "Answer:"


def right_padded(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (B, longest): the sequences left-aligned, then `pad_id`."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def token_scores(model, state: ThoughtState, seqs: list[list[int]], n_thought: int, pad_id: int, batch: int = 8):
    """Per sequence: (NLL⁰, NLLᵐⁱˣ, w) lists, entry i scoring token i + 1."""
    out = []
    for b in range(0, len(seqs), batch):
        chunk = seqs[b : b + batch]
        ids, mask = right_padded(chunk, pad_id, model.device)
        th = think(model, state, ids, mask, n_thought=n_thought, n_talk=1, sampler="greedy", pad_id=pad_id)
        base, _ = token_nll(th.base_logits, ids, mask, 0)
        mixed, _ = token_nll(th.mixed_logits[0], ids, mask, 0)
        for r, s in enumerate(chunk):
            n = len(s) - 1
            out.append((base[r, :n].tolist(), mixed[r, :n].tolist(), th.mix[0][r, :n, 0].tolist()))
    return out


def paired_se(diffs: list[float]) -> float:
    """Standard error of the mean of per-token differences (thought minus plain on the same tokens)."""
    n = len(diffs)
    if n < 2:
        return 0.0
    mean = sum(diffs) / n
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)


def _summary(prefix: str, base: list[float], mixed: list[float]) -> dict[str, float]:
    if not base:
        return {}
    k = max(1, len(base) // 10)
    hard = sorted(range(len(base)), key=lambda i: -base[i])[:k]
    return {
        f"{prefix}_nll": sum(base) / len(base), f"{prefix}_nll_thought": sum(mixed) / len(mixed),
        f"{prefix}_nll_change_se": paired_se([m - b for b, m in zip(base, mixed)]),
        f"{prefix}_hard_nll": sum(base[i] for i in hard) / k, f"{prefix}_hard_nll_thought": sum(mixed[i] for i in hard) / k,
        f"{prefix}_helped_share": sum(m < b for b, m in zip(base, mixed)) / len(base),
    }


def text_windows(tokenizer, split: str, tokens: int, window: int = 128) -> list[list[int]]:
    """The first `tokens` tokens of the split's natural text, in windows of `window`."""
    ids = tokenizer(natural_text(split), add_special_tokens=False).input_ids[:tokens]
    return [ids[i : i + window] for i in range(0, len(ids) - 1, window) if len(ids[i : i + window]) > 1]


def arithmetic_sequences(tokenizer, eval_cfg, n: int, split: str = "test"):
    """(prompt + target token ids, (target start, answer start, end)) for `n` arithmetic examples in the eval's
    few-shot format; the answer is what follows the target's last "Answer:"."""
    task = get_task("arithmetic", eval_cfg.data)
    out = []
    for prompt, ex in with_shots(task, split, n, eval_cfg.shots, eval_cfg.seed):
        full = tokenizer(prompt + ex.target, add_special_tokens=False).input_ids
        start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        cut = ex.target.rfind(ANSWER_MARK)
        ans = len(tokenizer(prompt + ex.target[: cut + len(ANSWER_MARK)], add_special_tokens=False).input_ids) \
            if cut >= 0 else start
        out.append((full, (start, ans, len(full))))
    return out


def arithmetic_summary(spans, per_seq: list[list[float]], suffix: str = "") -> dict[str, float]:
    """Mean NLL of the targets and of the answers, and the mean teacher-forced answer probability."""
    target, answer, prob = [], [], []
    for (start, ans, end), nll in zip(spans, per_seq):
        target += nll[start - 1 : end - 1]
        answer += nll[ans - 1 : end - 1]
        prob.append(math.exp(-sum(nll[ans - 1 : end - 1])))
    return {f"arithmetic_nll{suffix}": sum(target) / len(target), f"answer_nll{suffix}": sum(answer) / len(answer),
            f"answer_prob{suffix}": sum(prob) / len(prob)}


def thought_metrics(model, state: ThoughtState, tokenizer, eval_cfg, n_thought: int, n_examples: int,
                    text_tokens: int, window: int = 128, split: str = "test") -> dict[str, float]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    metrics: dict[str, float] = {}
    scores = token_scores(model, state, text_windows(tokenizer, split, text_tokens, window), n_thought, pad)
    base = [v for b, _, _ in scores for v in b]
    mixed = [v for _, m, _ in scores for v in m]
    ws = sorted(v for _, _, w in scores for v in w)
    metrics.update(_summary("text", base, mixed))
    metrics.update(mix_mean=sum(ws) / len(ws), mix_q10=ws[len(ws) // 10], mix_q50=ws[len(ws) // 2],
                   mix_q90=ws[(9 * len(ws)) // 10])
    items = arithmetic_sequences(tokenizer, eval_cfg, n_examples, split)
    spans = [sp for _, sp in items]
    scores = token_scores(model, state, [s for s, _ in items], n_thought, pad)
    metrics.update(arithmetic_summary(spans, [b for b, _, _ in scores]))
    metrics.update(arithmetic_summary(spans, [m for _, m, _ in scores], "_thought"))
    answer_b = [v for (_, a, e), (b, _, _) in zip(spans, scores) for v in b[a - 1 : e - 1]]
    answer_m = [v for (_, a, e), (_, m, _) in zip(spans, scores) for v in m[a - 1 : e - 1]]
    metrics.update({k: v for k, v in _summary("answer", answer_b, answer_m).items() if "hard" in k or "helped" in k})
    return metrics


EFFECT_ROWS = (("held-out text NLL", "text_nll"), ("its hardest 10% of tokens", "text_hard_nll"),
               ("arithmetic target NLL", "arithmetic_nll"), ("answer NLL", "answer_nll"),
               ("answer probability", "answer_prob"))


def effect_table(metrics: dict[str, float]) -> dict:
    """Thought mode against plain mode on the same held-out tokens: the stage's own measure (for the report)."""
    rows = []
    for name, key in EFFECT_ROWS:
        if key in metrics and f"{key}_thought" in metrics:
            plain, thought = metrics[key], metrics[f"{key}_thought"]
            se = metrics.get(f"{key}_change_se")
            rows.append({"measure": name, "plain": plain, "thought mode": thought,
                         "change": f"{thought - plain:+.4f}" + (f" ± {se:.4f}" if se is not None else "")})
    rows.append({"measure": "mixing weight w (mean; 10/50/90%)", "plain": "", "thought mode": metrics["mix_mean"],
                 "change": f"{metrics['mix_q10']:.3g} / {metrics['mix_q50']:.3g} / {metrics['mix_q90']:.3g}"})
    return {"columns": ["measure", "plain", "thought mode", "change"], "rows": rows}
