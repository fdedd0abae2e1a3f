"""Dense embeddings from the model itself (no hub download): the mean of the last layer's hidden states over
a text's tokens, L2-normalized; similarity is the dot product (cosine)."""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], batch_size: int = 16, max_len: int = 256) -> np.ndarray:
    # the decoder body alone (`base_model`): the LM head's vocabulary-wide logits are not needed and would cost
    # a fifth of the FLOPs; texts go in length order so a batch pads little
    body = getattr(model, "base_model", model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = [tokenizer(t, add_special_tokens=False).input_ids[:max_len] or [pad] for t in texts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        width = max(len(enc[r]) for r in rows)
        ids = torch.tensor([enc[r] + [pad] * (width - len(enc[r])) for r in rows], device=model.device)
        mask = (torch.arange(width)[None, :] < torch.tensor([len(enc[r]) for r in rows])[:, None]).to(model.device)
        hidden = body(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    return out
