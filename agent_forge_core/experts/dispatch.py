"""The first pass of Transformer²'s two-pass inference (§3.2): which expert a prompt gets.

Modes, all judged by exact dispatch accuracy on labelled test prompts (the domains come from generators):
- prompt: the model itself classifies, scored as the log-likelihood of each domain's label after a
  classification prompt (constrained choice; the reference generates a `\\boxed{}` label instead).
- cls_expert: the same prompt read by the model with a classification expert, an SVF vector trained on
  "prompt → label" (the reference's "Cls-expert" strategy).
- linear: logistic regression on the base model's mean-pooled last hidden states (not in the paper; the cheap
  baseline the others are compared with).
A prompt that belongs to none of the domains gets the base weights (`OTHER`), as the reference's "other"
category does: the prompt modes offer the label `other`; the linear probe rejects a query whose standardised
features lie farther from its predicted domain's centroid than `margin` times the farthest of that domain's
training queries (a nearest-centroid open-set rule; on SmolLM2 the chat text of `perplexity_ood` lies 25-37
from every centroid, the domains' test prompts within 23).
- cem: few-shot adaptation, one mix α per task searched with `cem.py` on a handful of its train examples; it
  needs the task known, so it has no per-prompt accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..evals.tasks import Example
from .domains import Domain
from .svf import SVF
from .expert import Expert
from .train import pack, sequence_logprobs, train_expert

CLASSIFY_CHARS = 400  # the end of a long prompt (few-shot blocks come first) is where its own question is
OTHER = "base"  # the choice for a prompt of none of the domains: the base weights
OTHER_LABEL = "other"


def classify_prompt(query: str, domains: list[str]) -> str:
    return (f"Which kind of request is this? Kinds: {', '.join(domains)}.\n"
            f"Request: {query[-CLASSIFY_CHARS:]}\nKind:")


@torch.no_grad()
def label_scores(model, tok, prompts: list[str], labels: list[str], batch_size: int = 16) -> torch.Tensor:
    """(N, K) log-likelihood of " label" after each prompt."""
    firsts = [tok(" " + lab, add_special_tokens=False).input_ids[0] for lab in labels]
    device = next(model.parameters()).device
    out = []
    if len(set(firsts)) == len(firsts):  # first tokens tell the labels apart: one forward per prompt
        for i in range(0, len(prompts), batch_size):
            ids, mask, _ = pack(tok, [(p, "") for p in prompts[i:i + batch_size]], device)
            last = mask.sum(1) - 1
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            lp = torch.log_softmax(logits[torch.arange(len(last)), last], -1)
            out.append(lp[:, firsts].cpu())
        return torch.cat(out)
    pairs = [(p, " " + lab) for p in prompts for lab in labels]
    for i in range(0, len(pairs), batch_size):
        ids, mask, lab = pack(tok, pairs[i:i + batch_size], device)
        out.append(sequence_logprobs(model, ids, mask, lab)[0].cpu())
    return torch.cat(out).view(len(prompts), len(labels))


@torch.no_grad()
def pooled_features(model, tok, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Mean of the last hidden states over each text's tokens, (N, H)."""
    device = next(model.parameters()).device
    feats = []
    for i in range(0, len(texts), batch_size):
        ids, mask, _ = pack(tok, [("", t[-CLASSIFY_CHARS:]) for t in texts[i:i + batch_size]], device)
        h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1].float()
        m = mask[..., None].float()
        feats.append(((h * m).sum(1) / m.sum(1)).cpu())
    return torch.cat(feats)


@dataclass
class LinearProbe:
    """Softmax regression on standardised features: p(k | x) = softmax(W (x − μ)/s + b); x is rejected (−1) when
    ‖(x − μ)/s − c_k‖ > r_k for its predicted k (c_k: the centroid of k's training features, r_k: `margin` × their
    largest distance to it)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    centroids: torch.Tensor | None = None
    radius: torch.Tensor | None = None

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300, l2: float = 1e-3,
            margin: float | None = 1.1) -> "LinearProbe":
        mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
        xs = (x - mean) / std
        w = torch.zeros(classes, x.shape[1], requires_grad=True)
        b = torch.zeros(classes, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xs @ w.T + b, y) + l2 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        if margin is None:
            return cls(mean, std, w.detach(), b.detach())
        centroids = torch.stack([xs[y == k].mean(0) for k in range(classes)])
        radius = torch.stack([(xs[y == k] - centroids[k]).norm(dim=-1).max() * margin for k in range(classes)])
        return cls(mean, std, w.detach(), b.detach(), centroids, radius)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The class of each row, −1 where it is rejected."""
        xs = (x - self.mean) / self.std
        k = (xs @ self.weight.T + self.bias).argmax(-1)
        if self.centroids is None:
            return k
        far = (xs - self.centroids[k]).norm(dim=-1) > self.radius[k]
        return torch.where(far, torch.full_like(k, -1), k)

    def as_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("mean", "std", "weight", "bias", "centroids", "radius")
                if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "LinearProbe":
        return cls(**{k: torch.tensor(v) for k, v in d.items()})


class ClassifyDomain:
    """"prompt → domain label" as a trainable domain (the classification expert's data), train splits only."""

    name = "dispatch"
    checkable = True

    def __init__(self, domains: list[Domain], per_domain: int):
        self.domains, self.per_domain = domains, per_domain
        self.task = self  # `train_expert` reads the checker from `.task.check`

    def examples(self, split: str, n: int, shots: int, seed: int) -> list[tuple[str, Example]]:
        names = [d.name for d in self.domains]
        kinds = [*names, OTHER_LABEL]  # the kinds the router offers (`prompt_router`)
        rows = []
        for d in self.domains:
            for q in d.queries(split, max(self.per_domain, n // len(self.domains) + 1), shots, seed):
                rows.append((classify_prompt(q, kinds), Example(q, " " + d.name, d.name)))
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
        return [rows[i] for i in order][:n]

    @staticmethod
    def check(completion: str, ex: Example) -> bool:
        return completion.strip().split(" ")[0].strip(".,") == ex.answer


def train_classifier(model, tok, svf: SVF, domains: list[Domain], cfg, shots: int, seed: int,
                     progress: Callable[[float, str], None] | None = None) -> tuple[Expert, list[dict]]:
    """The classification expert (`cls_expert`): an SVF expert on `ClassifyDomain`'s "prompt → label" rows,
    trained with `cfg.cls_objective`. nll minimises −log p(" label" | classify prompt), whose first token's
    log-probability is the score the router takes the argmax of (the whole label's where first tokens collide),
    so it is the classifier's cross-entropy; reinforce (the reference's) only reweights the
    greedy label's likelihood by ±1, and with one label per batch mostly right it drifts to that label."""
    train = cfg.train.model_copy(update={"objective": cfg.cls_objective})
    e, hist = train_expert(model, tok, svf, ClassifyDomain(domains, cfg.dispatch_train), train, shots, seed, progress)
    e.domain = "_dispatch"
    return e, hist


Router = Callable[[list[str]], list[str]]


def prompt_router(model, tok, domains: list[str], svf: SVF | None = None, z=None) -> Router:
    """Routes by label likelihood over the domains and `other` (→ `OTHER`), under the base weights (prompt) or a
    classification expert's (cls_expert)."""
    labels = [*domains, OTHER_LABEL]

    def route(queries: list[str]) -> list[str]:
        if svf is not None:
            svf.apply(z)
        try:
            scores = label_scores(model, tok, [classify_prompt(q, labels) for q in queries], labels)
        finally:
            if svf is not None:
                svf.apply(None)
        return [(domains + [OTHER])[i] for i in scores.argmax(-1).tolist()]

    return route


def linear_router(model, tok, domains: list[str], probe: LinearProbe) -> Router:
    def route(queries: list[str]) -> list[str]:
        return [domains[i] if i >= 0 else OTHER for i in probe.predict(pooled_features(model, tok, queries)).tolist()]

    return route


def dispatch_accuracy(route: Router, queries: dict[str, list[str]], others: list[str] = ()) -> dict[str, float]:
    """Share of each domain's queries routed to it, their mean over domains (`all`), and the share of `others`
    (text of no domain) routed to the base weights (`other`)."""
    acc = {}
    for d, qs in queries.items():
        got = route(qs)
        acc[d] = sum(g == d for g in got) / len(qs)
    acc["all"] = sum(acc[d] for d in queries) / len(queries)
    if others:
        acc[OTHER_LABEL] = sum(g == OTHER for g in route(list(others))) / len(others)
    return acc
