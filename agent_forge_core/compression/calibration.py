"""Calibration statistics for Hessian-aware codecs: H = XᵀX / n for the input X of every linear layer.

X are the layer's inputs while the model reads held-in natural text (the train split, never the
evaluation's validation/test text), as GPTQ and VPTQ collect them (VPTQ §3.1). Forward pre-hooks add
each batch's XᵀX in float64; nothing else of the activations is kept.
"""
from __future__ import annotations

import torch

from ..training.sft_data import text_sequences


@torch.no_grad()
def linear_hessians(model, tokenizer, names: list[str], tokens: int, seq_len: int, seed: int = 0,
                    device: str = "cpu") -> dict[str, torch.Tensor]:
    """{module name: H (in × in), float32} for the nn.Linear modules `names` (module names, no `.weight`)."""
    modules = dict(model.named_modules())
    sums = {n: torch.zeros(modules[n].in_features, modules[n].in_features, dtype=torch.float64) for n in names}
    counts = dict.fromkeys(names, 0)

    def hook(name):
        def fn(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to("cpu", torch.float64)
            sums[name] += x.T @ x
            counts[name] += x.shape[0]
        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        n_seq = max(1, tokens // seq_len)
        for ids, _ in text_sequences(tokenizer, seq_len, n_seq, seed):
            model(input_ids=torch.tensor([ids], device=device))
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / max(counts[n], 1)).float() for n in names}
