"""The parallel thought forward of Quiet-STaR (§4.2 of the paper; the reference's `forward` loop).

With m sampled thought tokens and T talk tokens, one call runs 1 + (m + T + 1) decoder passes over all L
columns at once (the reference's n_ahead = m + 3, n_ahead + T - 1 passes):

    pass 0        x_1..x_L                                   base pass: h0_j, logits l0_j (predicts x_{j+1})
    pass 1        <start> in every column
    pass 2..m+1   c_{j,1..m}, c_{j,k} sampled from the logits of pass k
    pass m+2      <end>                                      talk hidden s = 0 (predicts x_{j+1})
    pass m+2+s    x_{j+s}, s = 1..T-1 (teacher forcing)      talk hidden s   (predicts x_{j+s+1})

Column j's token at pass k sits at position pos_j + k and attends to x_{<=j} and to column j's own earlier
tokens only (`mask.step_mask`); the KV cache grows by L per pass. The mixed prediction of talk step s is
(1 - w)·l0_{j+s} + w·W h_{j,s} with w = head([h0_{j+s}; h_{j,s}]) (`state.ThoughtState`). Thought
tokens are sampled with the hard Gumbel-max trick at τ = 1 (detached: the sample is an embedding lookup)
and the thought tokens' own logits are set to -inf first, so a thought never contains them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..evals.suite import suppress
from .mask import base_mask, step_mask
from .state import ThoughtState

Sampler = Literal["gumbel", "greedy", "forced"]


@dataclass
class Thoughts:
    """Everything one parallel forward computes. Rows: each input row repeated `n_passes` times (adjacent)."""

    valid: torch.Tensor  # (N, L) 1 = real token
    input_ids: torch.Tensor  # (N, L)
    base_hidden: torch.Tensor  # (N, L, H)
    base_logits: torch.Tensor  # (N, L, V)
    thought_ids: torch.Tensor  # (N, L, m)
    thought_logp: torch.Tensor | None  # (N, L, m): log softmax(logits / τ_policy)[c], None without a τ_policy
    talk_logits: list[torch.Tensor] = field(default_factory=list)  # T × (N, L, V)
    mix: list[torch.Tensor] = field(default_factory=list)  # T × (N, L, 1)
    mixed_logits: list[torch.Tensor] = field(default_factory=list)  # T × (N, L, V): column j predicts x_{j+s+1}
    step_hidden: list[torch.Tensor] = field(default_factory=list)  # hidden of passes 1.. (with keep_steps)


def _pick(logits: torch.Tensor, sampler: Sampler, generator, temperature: float) -> torch.Tensor:
    if sampler == "greedy":
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(u.clamp(min=1e-20, max=1 - 1e-7)))
    return (logits.float() / temperature + gumbel).argmax(-1)


def think(
    model,
    state: ThoughtState,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    n_thought: int,
    n_talk: int = 1,
    n_passes: int = 1,
    sampler: Sampler = "gumbel",
    forced: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    gumbel_temperature: float = 1.0,
    policy_temperature: float | None = None,
    pad_id: int = 0,
    keep_steps: bool = False,
) -> Thoughts:
    """The parallel forward of the module docstring over right-padded `input_ids` (B, L).

    `sampler`: gumbel (training), greedy (thought-mode inference) or forced (`forced` ids (N, L, m), tests
    and the pause-token control). `policy_temperature`: also return the REINFORCE log-probabilities."""
    if n_passes > 1:
        input_ids = input_ids.repeat_interleave(n_passes, 0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(n_passes, 0)
    valid = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
    n, length = input_ids.shape
    decoder, embed, lm_head = model.get_decoder(), model.get_input_embeddings(), model.get_output_embeddings()
    hidden = embed.weight.shape[1]
    base = base_mask(valid, embed.weight.dtype)
    pos = (valid.cumsum(-1) - 1).clamp(min=0)

    out = decoder(inputs_embeds=embed(input_ids), attention_mask=base, position_ids=pos, use_cache=True)
    cache, h0 = out.past_key_values, out.last_hidden_state
    l0 = lm_head(h0)
    res = Thoughts(valid, input_ids, h0, l0, input_ids.new_zeros(n, length, n_thought),
                   None if policy_temperature is None else h0.new_zeros(n, length, n_thought))
    start, end = state.embeddings()
    fed = start.to(h0.dtype).expand(n, length, hidden)
    for k in range(1, n_thought + n_talk + 2):
        out = decoder(inputs_embeds=fed, attention_mask=step_mask(base, k), position_ids=pos + k,
                      past_key_values=cache, use_cache=True)
        cache, h = out.past_key_values, out.last_hidden_state
        if keep_steps:
            res.step_hidden.append(h)
        if k <= n_thought:
            logits = suppress(lm_head(h), state.tokens.ids)
            if sampler == "forced":
                c = forced[..., k - 1]
            else:
                with torch.no_grad():
                    c = _pick(logits, sampler, generator, gumbel_temperature)
            res.thought_ids[..., k - 1] = c
            if policy_temperature is not None:
                logp = torch.log_softmax(logits.float() / policy_temperature, dim=-1)
                res.thought_logp[..., k - 1] = logp.gather(-1, c[..., None])[..., 0]
            fed = embed(c)
        elif k == n_thought + 1:
            fed = end.to(h0.dtype).expand(n, length, hidden)
        else:
            s = k - (n_thought + 2)
            _talk(res, state, lm_head, h, s)
            if s + 1 < n_talk:
                fed = embed(_shift(input_ids, s + 1, pad_id))
    return res


def _talk(res: Thoughts, state: ThoughtState, lm_head, h: torch.Tensor, s: int) -> None:
    """Talk step s: column j's hidden state after the thought and x_{j+1..j+s} predicts x_{j+s+1}; mixed with
    the base pass at column j + s (the reference rolls the base states by s)."""
    h0 = torch.roll(res.base_hidden, -s, dims=1)
    l0 = torch.roll(res.base_logits, -s, dims=1)
    lt = lm_head(h)
    w = state.mix_weight(h0, h)
    res.talk_logits.append(lt)
    res.mix.append(w)
    res.mixed_logits.append((1 - w) * l0 + w * lt)


def _shift(ids: torch.Tensor, s: int, pad_id: int) -> torch.Tensor:
    """Column j holds x_{j+s}; columns past the end hold `pad_id` (their targets are masked)."""
    return torch.cat([ids[:, s:], ids.new_full((ids.shape[0], s), pad_id)], dim=1)
