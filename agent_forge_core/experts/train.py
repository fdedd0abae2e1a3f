"""Training one SVF expert (Transformer² §3.1; reference `optim_modules.Reinforce`).

reinforce (the reference's objective): each step, greedy answers y_i to B train prompts x_i from the model
with W'(z) (the reference samples at temperature 0), rewards r_i = ±1 from the task checker, and

    J(p) = −(1/B) Σ_i r_i Σ_t log π_{W'(z)}(y_{i,t} | x_i, y_{i,<t})  +  λ_KL · KL(π_{W'(z)} ‖ π_W),  z = sigmoid(p),

minimised with Adam and gradient-norm clipping on p (reference: lr 2e-3, clip 1e-3, λ_KL 0). Greedy samples
make this a reweighting of the greedy outputs' likelihood, not an unbiased policy gradient.
nll (not the reference's; for domains where the base is never right, so every reward is −1 and REINFORCE only
pushes likelihood down, and for `language`, which has no checker): teacher-forced mean token NLL of the gold
target (or of the text window). `auto` picks reinforce when the base answers at least `min_reward_share` of a
train batch correctly, else nll; the expert's metadata records which and why.

Gradient: W'(z) is written into the model's target weights, autograd gives G = ∂J/∂W' for those weights only,
and `svf.z_grad` maps it to z (then ∂z/∂p = z(1−z)).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..evals.suite import greedy_complete
from .domains import Domain
from .expert import Expert
from .svf import SVF, z_grad


def pack(tok, pairs: list[tuple[str, str]], device, max_len: int = 512):
    """Right-padded ids, mask and labels (−100 on the prompt): the completion's tokens are the targets."""
    seqs, labels = [], []
    for prompt, completion in pairs:
        p = tok(prompt, add_special_tokens=False).input_ids if prompt else []
        full = tok(prompt + completion, add_special_tokens=False).input_ids
        lab = [-100] * len(p) + full[len(p):]
        seqs.append(full[-max_len:])
        labels.append(lab[-max_len:])
    width = max(map(len, seqs))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels], device=device)
    mask = (lab != -100) | (torch.arange(width, device=device)[None] < torch.tensor([len(s) for s in seqs], device=device)[:, None])
    return ids, mask.long(), lab


def with_stop(tok, completion: str, max_new_tokens: int) -> str:
    """A greedy answer as the actions taken, its stop included: greedy decoding keeps a stopping newline in the
    text but drops a stopping EOS, so that EOS is put back. Without it an answer that is EOS alone has no token,
    hence no gradient: with a −1 reward REINFORCE drives the policy to answer nothing and then stays there (seen on
    SmolLM2's recall expert: reward share 0.25 → 0 in two steps, loss 0 after)."""
    if completion.endswith("\n") or tok.eos_token is None or \
            len(tok(completion, add_special_tokens=False).input_ids) >= max_new_tokens:
        return completion
    return completion + tok.eos_token


def labelled_logprobs(model, ids, mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(·) at the labelled positions only, (P, V), and the sequence index of each row, (P,).

    The vocabulary projection and its softmax run on the answer tokens alone (a few-shot prompt is mostly
    context: ~5x fewer rows than full logits, and no (B, T, 49152) float32 tensor)."""
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    keep = labels[:, 1:] != -100
    rows = model.get_output_embeddings()(hidden[keep]).float()
    return torch.log_softmax(rows, -1), keep.nonzero()[:, 0]


def sequence_logprobs(model, ids, mask, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Σ_t log π(y_t) per sequence over the labelled positions, their counts, and the (P, V) log-probabilities."""
    lp, seq = labelled_logprobs(model, ids, mask, labels)
    tok_lp = lp.gather(-1, labels[:, 1:][labels[:, 1:] != -100][:, None])[:, 0]
    sums = torch.zeros(ids.shape[0], device=ids.device, dtype=tok_lp.dtype).index_add(0, seq, tok_lp)
    return sums, torch.bincount(seq, minlength=ids.shape[0]), lp


def _kl_to_base(model, svf: SVF, z, ids, mask, labels, lp):
    """KL(π_{W'} ‖ π_W) summed over the labelled positions, averaged over sequences."""
    svf.apply(None)
    with torch.no_grad():
        ref, _ = labelled_logprobs(model, ids, mask, labels)
    svf.apply(z)
    return (lp.exp() * (lp - ref)).sum() / ids.shape[0]


def choose_objective(cfg, domain: Domain, base_share: float | None) -> tuple[str, str]:
    """(objective, why)."""
    if not domain.checkable:
        return "nll", "no checker (text domain)"
    if cfg.objective != "auto":
        return cfg.objective, "configured"
    if base_share is not None and base_share >= cfg.min_reward_share:
        return "reinforce", f"base answers {base_share:.2f} of a train batch (>= {cfg.min_reward_share})"
    return "nll", f"base answers {base_share:.2f} of a train batch (< {cfg.min_reward_share}): rewards ~all -1"


def train_expert(model, tok, svf: SVF, domain: Domain, cfg, shots: int, seed: int,
                 progress: Callable[[float, str], None] | None = None) -> tuple[Expert, list[dict]]:
    """One expert for `domain`; the model is left with its base weights."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    # the reference's init: p = 0.1 + 0.01·N(0, 1) on every target matrix
    p = {n: (torch.randn(f.rank) * 0.01 + cfg.init).requires_grad_(True) for n, f in svf.factors.items()}
    opt = torch.optim.Adam(list(p.values()), lr=cfg.lr)
    steps, B = cfg.steps, cfg.batch_size
    items = domain.examples("train", steps * B, shots, seed) if domain.checkable else []
    texts = domain.texts("train", steps * B, cfg.text_chars, seed) if not domain.checkable else []
    trainable = {n: q.requires_grad for n, q in model.named_parameters()}
    for n, q in model.named_parameters():
        q.requires_grad_(n in svf.params)
    history: list[dict] = []
    objective, why, base_share = None, "", None
    try:
        for step in range(steps):
            t0 = time.time()
            z = {n: torch.sigmoid(v.detach()) for n, v in p.items()}
            svf.apply(z)
            row: dict = {"step": step}
            if domain.checkable:
                batch = items[step * B:(step + 1) * B]
                prompts = [x for x, _ in batch]
                if objective != "nll":
                    completions = greedy_complete(model, tok, prompts, cfg.max_new_tokens, B)
                    rewards = [1.0 if domain.task.check(c, ex) else -1.0 for c, (_, ex) in zip(completions, batch)]
                    row["reward_share"] = sum(r > 0 for r in rewards) / len(rewards)
                    if objective is None:
                        base_share = row["reward_share"]
                        objective, why = choose_objective(cfg, domain, base_share)
                if objective is None:
                    objective, why = choose_objective(cfg, domain, None)
                pairs = [(x, ex.target if objective == "nll" else with_stop(tok, c, cfg.max_new_tokens)) for (x, ex), c in
                         zip(batch, completions if objective == "reinforce" else [""] * len(batch))]
            else:
                objective, why = choose_objective(cfg, domain, None)
                pairs = [("", t) for t in texts[step * B:(step + 1) * B]]
            ids, mask, labels = pack(tok, pairs, device)
            seq_lp, count, lp = sequence_logprobs(model, ids, mask, labels)
            if objective == "reinforce":
                r = torch.tensor(rewards, device=device)
                loss = -(r * seq_lp).sum() / len(pairs)
            else:
                loss = -seq_lp.sum() / count.sum().clamp(min=1)
            row["loss"] = float(loss.detach())
            if cfg.kl_coeff > 0:
                kl = _kl_to_base(model, svf, z, ids, mask, labels, lp)
                row["kl"] = float(kl)
                loss = loss + cfg.kl_coeff * kl
            loss.backward()
            grad_norm = 0.0
            for n, v in p.items():
                g = z_grad(svf.factors[n], z[n], svf.params[n].grad) * z[n] * (1 - z[n])
                v.grad = g.to(v.dtype)
                grad_norm += float(g.pow(2).sum())
                svf.params[n].grad = None
            row["grad_norm"] = grad_norm ** 0.5
            torch.nn.utils.clip_grad_norm_(list(p.values()), cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            row["z_mean"] = float(torch.cat([torch.sigmoid(v.detach()) for v in p.values()]).mean())
            row["seconds"] = time.time() - t0
            history.append(row)
            if progress:
                progress((step + 1) / steps, f"{domain.name}: step {step + 1}/{steps} {objective} loss {row['loss']:.3f}")
    finally:
        svf.apply(None)
        for n, q in model.named_parameters():
            q.requires_grad_(trainable[n])
            q.grad = None
    z = {n: torch.sigmoid(v.detach()) for n, v in p.items()}
    meta = {"objective": objective, "objective_why": why, "base_reward_share": base_share, "steps": steps,
            "batch_size": B, "lr": cfg.lr, "kl_coeff": cfg.kl_coeff}
    return Expert(domain.name, z, meta), history
