"""Dense embeddings from the model itself (no hub download): the mean of the last layer's hidden states over
a text's tokens, L2-normalized; similarity is the dot product (cosine)."""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], batch_size: int = 16, max_len: int = 256) -> np.ndarray:
    out = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for i in range(0, len(texts), batch_size):
        enc = [tokenizer(t, add_special_tokens=False).input_ids[:max_len] or [pad] for t in texts[i : i + batch_size]]
        width = max(map(len, enc))
        ids = torch.tensor([e + [pad] * (width - len(e)) for e in enc], device=model.device)
        mask = (torch.arange(width)[None, :] < torch.tensor([len(e) for e in enc])[:, None]).to(model.device)
        hidden = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[-1].float()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)
