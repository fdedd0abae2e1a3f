"""Thought mode at inference: think before every token, mix, emit, forget the thought.

Per emitted token (the reference's `infer`, with its n_passes = n_talk = 1 at eval and greedy thoughts
where it samples at τ = 0.001): feed <start> at the position after the last token, m greedy thought tokens,
<end>; mix the hidden state after <end> with the base pass's hidden state of the last token through the
head; take the argmax of the mixed logits (thought tokens excluded); crop the thought from the KV cache;
feed the emitted token. The result equals the parallel forward (`engine.think`, greedy) recomputed on the
generated prefix (tested). `ThoughtLM` is the teacher-forced side: its `.logits` are the mixed
predictions at every position, so the eval suite's perplexity and NLLs run in thought mode unchanged.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from ..evals.suite import newline_ids, suppress
from .engine import think
from .state import ThoughtState


class ThoughtLM(torch.nn.Module):
    """`model` in thought mode, teacher-forced: `forward(input_ids, attention_mask).logits` (B, L, V) are the
    mixed next-token logits of every position (greedy thoughts of `n_thought` tokens)."""

    def __init__(self, model, state: ThoughtState, n_thought: int):
        super().__init__()
        self.model, self.state, self.n_thought = model, state, n_thought

    @property
    def device(self):
        return self.model.device

    def forward(self, input_ids, attention_mask=None, **_):
        th = think(self.model, self.state, input_ids, attention_mask, n_thought=self.n_thought, n_talk=1,
                   sampler="greedy")
        return SimpleNamespace(logits=th.mixed_logits[0])


@torch.no_grad()
def thought_step_logits(model, state: ThoughtState, cache, mask: torch.Tensor, h_last: torch.Tensor,
                        last_pos: torch.Tensor, n_thought: int) -> torch.Tensor:
    """Mixed logits (B, V) of the next token of each row, whose prefix's KV is in `cache` (left as it was),
    with key mask `mask` (B, S), last hidden state `h_last` (B, H) at positions `last_pos` (B,)."""
    decoder, embed, lm_head = model.get_decoder(), model.get_input_embeddings(), model.get_output_embeddings()
    n0 = cache.get_seq_length()
    start, end = state.embeddings()
    rows = h_last.shape[0]
    fed = start.to(h_last.dtype).expand(rows, 1, -1)
    for k in range(1, n_thought + 3):
        step_mask = torch.cat([mask, mask.new_ones(rows, k)], dim=1)
        out = decoder(inputs_embeds=fed, attention_mask=step_mask, position_ids=(last_pos + k)[:, None],
                      past_key_values=cache, use_cache=True)
        h = out.last_hidden_state[:, -1]
        if k <= n_thought:
            fed = embed(suppress(lm_head(h), state.tokens.ids).argmax(-1)[:, None])
        elif k == n_thought + 1:
            fed = end.to(h_last.dtype).expand(rows, 1, -1)
    cache.crop(-(cache.get_seq_length() - n0))
    w = state.mix_weight(h_last, h)
    return suppress((1 - w) * lm_head(h_last) + w * lm_head(h), state.tokens.ids)


@torch.no_grad()
def thought_generate(model, state: ThoughtState, prompts: list[list[int]], max_new_tokens: int, n_thought: int,
                     stop_ids: set[int] = frozenset(), pad_id: int = 0) -> list[list[int]]:
    """Greedy thought-mode continuations of a batch of token-id prompts (left-padded together; a row ends
    after a token in `stop_ids`)."""
    decoder = model.get_decoder()
    device = model.device
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p, device=device)
        mask[r, width - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache, h, last = out.past_key_values, out.last_hidden_state[:, -1], pos[:, -1]
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        nxt = thought_step_logits(model, state, cache, mask, h, last, n_thought).argmax(-1)
        generated.append(torch.where(done, torch.full_like(nxt, -1), nxt))
        done |= torch.isin(nxt, stop)
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        last = last + 1
        out = decoder(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], past_key_values=cache,
                      use_cache=True)
        h = out.last_hidden_state[:, -1]
    rows = torch.stack(generated, dim=1).tolist()
    return [[t for t in row if t >= 0] for row in rows]


def thought_completer(model, state: ThoughtState, n_thought: int, max_new_tokens: int, batch_size: int = 16):
    """`complete(_, tokenizer, prompts)` for `evals.suite.evaluate`: one-line thought-mode answers of `model`
    (whatever model the suite passes, e.g. a `ThoughtLM` scoring the NLLs)."""

    def complete(_, tokenizer, prompts: list[str]) -> list[str]:
        stop = set(newline_ids(tokenizer).tolist()) | {tokenizer.eos_token_id}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        outs = []
        for i in range(0, len(prompts), batch_size):
            enc = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts[i : i + batch_size]]
            for gen in thought_generate(model, state, enc, max_new_tokens, n_thought, stop, pad):
                if gen and gen[-1] == tokenizer.eos_token_id:
                    gen = gen[:-1]
                outs.append(tokenizer.decode(gen, skip_special_tokens=True))
        return outs

    return complete
