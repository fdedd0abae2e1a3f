"""Self-modelling and confidence heads of phase 9 (issue 15).

Self-modelling (Premakumar et al. 2024, "Unexpected Benefits of Self-Modeling in Neural Systems", arXiv
2407.10188): an auxiliary linear map g predicts the network's own mid-layer activations from its last layer,

    L_self = mean_positions ‖g(h_L) − h_{L/2}‖²,

with the target **not** detached, so the gradient also moves the activations being predicted (the paper's
∂L_self/∂W = 2(WA − A)Aᵀ: the network makes itself easier to predict, which is what narrows its weights). The
origin project regressed the last layer onto itself through a detach, a near-identity task; that is not this.
Confidence: a linear c(h_L) regressing each position's detached next-token NLL; its input is detached too, so it
only reads the model (its AUROC for "the greedy token is right" says how much the last layer knows of its own
errors). The heads are a separate module, outside the model's tree, so saving the model never stores them.
"""
from __future__ import annotations

import torch
from torch import nn


class SelfModelHeads(nn.Module):
    def __init__(self, hidden: int, layers: int, weight: float = 0.1, confidence_weight: float = 1.0,
                 layer: int | None = None):
        super().__init__()
        self.weight, self.confidence_weight = weight, confidence_weight
        self.layer = layers // 2 if layer is None else layer  # hidden_states[k] is the output of block k
        self.predict = nn.Linear(hidden, hidden)
        self.confidence = nn.Linear(hidden, 1)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], token_nll: torch.Tensor, mask: torch.Tensor):
        """Auxiliary loss (weight·L_self + confidence_weight·L_conf) and its parts. `token_nll` and `mask`:
        (B, T) per predicting position."""
        h_last, h_mid = hidden_states[-1], hidden_states[self.layer]
        m = mask.to(h_last.dtype)
        n = m.sum().clamp(min=1)
        self_mse = (((self.predict(h_last) - h_mid) ** 2).mean(-1) * m).sum() / n
        conf = self.confidence(h_last.detach()).squeeze(-1)
        conf_mse = (((conf - token_nll.detach()) ** 2) * m).sum() / n
        loss = self.weight * self_mse + self.confidence_weight * conf_mse
        return loss, {"self_mse": float(self_mse.detach()), "confidence_mse": float(conf_mse.detach()),
                      "confidence": conf.detach()}


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic over all positive/negative pairs, ties half)."""
    s, y = scores.flatten().double(), positive.flatten().bool()
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = torch.empty_like(s)
    order = s.argsort()
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for v in s.unique():  # average ranks over ties
        tie = s == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    u = ranks[y].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))
