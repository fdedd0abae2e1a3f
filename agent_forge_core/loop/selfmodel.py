"""Self-modelling and confidence heads of phase 9 (issue 15).

Self-modelling (Premakumar et al. 2024, "Unexpected Benefits of Self-Modeling in Neural Systems", arXiv
2407.10188): an auxiliary linear map g predicts the network's own mid-layer activations from its last layer,

    L_self = mean_positions ‖g(h_L) − h_{L/2}‖² / sg(‖h_{L/2}‖²),

with the target **not** detached, so the gradient also moves the activations being predicted (the paper's
∂L_self/∂W = 2(WA − A)Aᵀ: the network makes itself easier to predict, which is what narrows its weights). The
origin project regressed the last layer onto itself through a detach, a near-identity task; that is not this.
Confidence: a linear c(h_L) regressing each position's detached next-token NLL; its input is detached too, so it
only reads the model (its AUROC for "the greedy token is right" says how much the last layer knows of its own
errors). The per-position denominator (gradient stopped) makes the loss scale-free: SmolLM2-135M's mid-layer
states have a mean square near 9.5e3 per dimension, dominated by a few positions with massive activations, so
the plain MSE of a random g started near 6.6e3 (0.1·MSE outweighed the cross-entropy ≈ 2 more than 300-fold), and
an error relative to the batch's mean power still left the ordinary positions' error ~20× their own power. g
starts at the least-squares fit of the same objective on the phase's first batch (`fit_predictor`). The heads are
a separate module, outside the model's tree, so saving the model never stores them.
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

    @torch.no_grad()
    def fit_predictor(self, hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor, ridge: float = 0.1) -> None:
        """Starts g at the weighted ridge-regression fit of h_mid on [h_L, 1] over one batch's positions, each
        weighted 1/‖h_mid‖² as in L_self, ridge scaled by the mean eigenvalue. On SmolLM2-135M (fitted on one
        4×128 batch, L_self on two others): 0.57 and 0.76 at ridge 0.1, 0.65 and 0.95 at 1e-3, 1.03 for a random g."""
        m = mask.bool()
        x, y = hidden_states[-1][m].double(), hidden_states[self.layer][m].double()
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # the bias as a last input
        wt = 1 / y.pow(2).sum(-1).clamp(min=1e-12)
        gram = x.T @ (x * wt[:, None])
        lam = ridge * float(gram.diagonal()[:-1].mean()) + 1e-12
        reg = lam * torch.eye(gram.shape[0], dtype=gram.dtype)
        reg[-1, -1] = 0  # the bias is not shrunk
        w = torch.linalg.solve(gram + reg, x.T @ (y * wt[:, None]))  # (H + 1, H): y ≈ [x, 1] W
        self.predict.weight.copy_(w[:-1].T.to(self.predict.weight.dtype))
        self.predict.bias.copy_(w[-1].to(self.predict.bias.dtype))

    def forward(self, hidden_states: tuple[torch.Tensor, ...], token_nll: torch.Tensor, mask: torch.Tensor):
        """Auxiliary loss (weight·L_self + confidence_weight·L_conf) and its parts. `token_nll` and `mask`:
        (B, T) per predicting position."""
        h_last, h_mid = hidden_states[-1], hidden_states[self.layer]
        m = mask.to(h_last.dtype)
        n = m.sum().clamp(min=1)
        power = (h_mid.detach() ** 2).mean(-1).clamp(min=1e-12)
        self_mse = (((self.predict(h_last) - h_mid) ** 2).mean(-1) / power * m).sum() / n
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
