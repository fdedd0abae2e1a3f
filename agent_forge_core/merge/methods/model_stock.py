from __future__ import annotations

import torch

from .base import MergeMethod, TensorInputs


class ModelStock(MergeMethod):
    """Model Stock (Jang et al. 2024, Eq. 5): with N fine-tuned models and their offsets from the base,
    cos θ = mean pairwise cosine of the offsets, t = N cos θ / (1 + (N − 1) cos θ),
    θ = t · mean_i θ_i + (1 − t) · θ_base. `filter_wise: true` computes t per row.
    A denominator of ~0 keeps the base (t = 0) instead of amplifying opposing updates."""

    name = "model_stock"
    reference = "https://arxiv.org/abs/2403.19522"
    needs_base = True
    min_models = 2
    global_params = {"filter_wise": False}

    def merge(self, x: TensorInputs) -> torch.Tensor:
        base = x.base
        ws = [x.tensors[i] for i in x.others()]
        shape = base.shape
        if x.params["filter_wise"]:
            w0 = base if base.dim() > 1 else base.unsqueeze(0)
            ws = [w if w.dim() > 1 else w.unsqueeze(0) for w in ws]
        else:
            w0, ws = base.reshape(-1), [w.reshape(-1) for w in ws]
        offsets = [w - w0 for w in ws]
        cos = []
        for a in range(len(offsets)):
            for b in range(a + 1, len(offsets)):
                norms = offsets[a].norm(dim=-1) * offsets[b].norm(dim=-1)
                cos.append(((offsets[a] * offsets[b]).sum(-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
        c = torch.stack(cos).mean(0).unsqueeze(-1)
        n = len(ws)
        den = 1 + (n - 1) * c
        singular = den.abs() < 1e-6
        t = torch.where(singular, torch.zeros_like(c), n * c / torch.where(singular, torch.ones_like(den), den))
        return (t * (sum(ws) / n) + (1 - t) * w0).reshape(shape)
