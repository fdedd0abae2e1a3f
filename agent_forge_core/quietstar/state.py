"""What Quiet-STaR adds to a model: the start/end-of-thought embeddings and the mixing head.

- Thought embeddings (reference `start_embedding`/`end_embedding`): a parameter p stored as e/s and used
  as s·p, s = `embedding_scale` (100), so these two rows learn with an effective learning rate ×s under
  Adam. Both start from the embedding of "---". On save the effective embeddings s·p are written into
  the token embedding rows of the thought tokens, and thought mode reads them from there: inference feeds
  exactly what training fed (the reference reads the untrained rows at inference, a train/infer mismatch).
- Mixing head (reference `talk_head`, `use_weighted_talk_head` + `use_concat_talk_head`):
  w = Linear(h,1,bias=False)(ReLU(Linear(h,h)(ReLU(Linear(2h,h)([h_base; h_thought]))))),
  last layer zero-initialised and no sigmoid (w is unbounded and starts at 0); the prediction is
  W((1-w)·h_base + w·h_thought), computed as (1-w)·logits_base + w·logits_thought (W is linear, no bias).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .tokens import ThoughtTokens

STATE_FILE = "quietstar.safetensors"
META_FILE = "quietstar.json"
INITIAL_TOKEN = "---"


class ThoughtState(nn.Module):
    def __init__(self, hidden: int, tokens: ThoughtTokens, embedding_scale: float = 100.0):
        super().__init__()
        self.tokens = tokens
        self.embedding_scale = embedding_scale
        self.thought_embedding = nn.Parameter(torch.zeros(2, hidden))  # rows: start, end; stored / scale
        # A loaded state reads the rows of the embedding table as they are (x / s · s need not be x in floats)
        self.table_embeddings: torch.Tensor | None = None
        self.head = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1, bias=False),
        )
        nn.init.zeros_(self.head[-1].weight)

    @classmethod
    def initial(cls, model, tokenizer, tokens: ThoughtTokens, embedding_scale: float = 100.0) -> "ThoughtState":
        """A fresh state: both thought embeddings from the first token of "---", the head's output zero."""
        emb = model.get_input_embeddings().weight
        state = cls(emb.shape[1], tokens, embedding_scale).to(emb.device)
        seed_id = tokenizer.encode(INITIAL_TOKEN, add_special_tokens=False)[0]
        with torch.no_grad():
            state.thought_embedding[:] = emb[seed_id].detach() / embedding_scale
        return state

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective start and end embeddings, (H,) each."""
        eff = self.thought_embedding * self.embedding_scale if self.table_embeddings is None else self.table_embeddings
        return eff[0], eff[1]

    def mix_weight(self, base_hidden: torch.Tensor, thought_hidden: torch.Tensor) -> torch.Tensor:
        """w (..., 1) from the concatenated base and with-thought hidden states."""
        return self.head(torch.cat([base_hidden, thought_hidden], dim=-1))

    def write_embeddings(self, model) -> None:
        """Put the effective thought embeddings into the model's token embedding table (done before saving)."""
        start, end = self.embeddings()
        with torch.no_grad():
            table = model.get_input_embeddings().weight
            table[self.tokens.start_id] = start.detach().to(table.dtype)
            table[self.tokens.end_id] = end.detach().to(table.dtype)

    def save(self, folder: str | Path, meta: dict) -> list[str]:
        """The head as safetensors (`quietstar.safetensors`) and the settings (`quietstar.json`)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tensors = {f"head.{k}": v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(tensors, str(folder / STATE_FILE))
        (folder / META_FILE).write_text(json.dumps(
            {**meta, "tokens": self.tokens.as_dict(), "embedding_scale": self.embedding_scale,
             "hidden": self.thought_embedding.shape[1]}, indent=2))
        return [STATE_FILE, META_FILE]

    @classmethod
    def load(cls, folder: str | Path, model) -> tuple["ThoughtState", dict]:
        """The state saved beside a checkpoint; the thought embeddings are read from the model's table."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        tokens = ThoughtTokens(**meta["tokens"])
        emb = model.get_input_embeddings().weight
        state = cls(meta["hidden"], tokens, meta["embedding_scale"]).to(emb.device)
        tensors = load_file(str(folder / STATE_FILE), device=str(emb.device))
        state.head.load_state_dict({k[len("head."):]: v for k, v in tensors.items()})
        with torch.no_grad():
            state.table_embeddings = emb[[tokens.start_id, tokens.end_id]].detach().clone()
            state.thought_embedding.copy_(state.table_embeddings / state.embedding_scale)
        return state, meta


def has_thoughts(folder: str | Path) -> bool:
    return (Path(folder) / META_FILE).is_file() and (Path(folder) / STATE_FILE).is_file()
