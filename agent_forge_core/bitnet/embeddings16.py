"""Embeddings and output head held in 16 bits for packed inference.

BitNet b1.58 ternarizes the linear layers of the blocks only; the embeddings and the output head stay in
high precision (16-bit in the paper's models and in bitnet.cpp's). A checkpoint written with
`embeddings="bfloat16"` stores the (tied) embedding matrix as bfloat16, and the packed model holds that one
tensor for both uses:

    input:  e = E16[ids]            widened to float32 (exact: every bfloat16 is a float32)
    output: logits = float32(bf16(h) @ E16^T)   (oneDNN accumulates the bfloat16 products in float32)

so against float32 embeddings the only changes are E rounded to 8 mantissa bits (once, when written) and the
final hidden state h rounded the same way before the head's product. On SmolLM2-135M that head is 576 x 49,152,
a quarter of the packed forward in float32. Measured (bench/bitnet_speed.py, 2 cores, AVX512-BF16): weights held
0.30x float32 instead of 0.41x, greedy decode 1.9-2.1x float32 instead of 1.6-1.7x, but the all-position forward
no faster (widening every position's logits to float32 costs what the product saves); the float model's test
perplexity 18.642 -> 18.660.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Embedding16(nn.Module):
    """An input embedding whose table is 16-bit; rows come back as float32."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float()


class Head16(nn.Module):
    """An output head that multiplies in the 16-bit dtype of its (shared) weight and returns float32 logits."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h.to(self.weight.dtype), self.weight).float()


def use_16bit_embeddings(model, dtype: torch.dtype) -> None:
    """Replace the model's input embedding and output head by `dtype` modules (a tied pair keeps one tensor)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    w_in = nn.Parameter(emb.weight.detach().to(dtype), requires_grad=False)
    w_out = w_in if head.weight is emb.weight else nn.Parameter(head.weight.detach().to(dtype), requires_grad=False)
    model.set_input_embeddings(Embedding16(w_in))
    model.set_output_embeddings(Head16(w_out))
