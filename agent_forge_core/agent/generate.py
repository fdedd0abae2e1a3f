"""The generation loop with tools in it.

The model writes its answer token by token (greedy, or sampled at `temperature`). When the text written
since the last tool result holds a complete call of a known tool (`markup.find_call`), generation pauses, the
tool runs, its result (`<result>…</result>`, `<docs>…</docs>` for search) is appended as tokens, and the model
goes on from there with its KV cache kept: the result's tokens are one more forward over the cache. At most
`max_calls` calls run per answer; a later call gets `<result>error: call limit reached</result>`. A call to a
tool in `pause_on` (a client's tool, `serve`) ends generation with the call pending. The answer ends at a
newline (`stop_at_newline`), end-of-sequence, or `max_new_tokens` tokens written by the model (inserted
results do not count).

Without the cache every step re-reads the whole sequence; both ways give the same tokens (tested), so the
cache is an optimisation, not a different model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..evals.suite import greedy_complete, suppress, suppressed_ids
from .markup import RESULT, Call, find_call, wrap


@dataclass
class Event:
    kind: str  # "text" (model tokens), "call", "result"
    text: str


@dataclass
class Generation:
    text: str  # the answer as written: model text, calls and inserted results
    calls: list[tuple[Call, str]] = field(default_factory=list)  # each executed call and its result
    pending: Call | None = None  # a call left for the client (a tool in `pause_on`)
    model_tokens: int = 0
    finish: str = "stop"  # stop | length | tool_calls


def _next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(model, tokenizer, prompt: str, tools: dict, *, prefix: str = "", max_new_tokens: int = 64,
             max_calls: int = 4, stop_at_newline: bool = True, temperature: float = 0.0, seed: int = 0,
             use_cache: bool = True, pause_on: set[str] = frozenset(),
             on_event: Callable[[Event], None] | None = None) -> Generation:
    """Answer `prompt` (+ an assistant `prefix` already written, e.g. a call and a client's result)."""
    device = model.device
    eos = tokenizer.eos_token_id
    gen = torch.Generator().manual_seed(seed) if temperature > 0 else None
    known = set(tools) | set(pause_on)
    ids = tokenizer(prompt + prefix, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    out = Generation(text=prefix)
    scanned = _pending_from(prefix, known)  # offset in out.text after which calls are looked for
    past, pending_ids = None, ids
    last_piece = ""  # the text the model's latest token added
    emit = on_event or (lambda e: None)
    banned = suppressed_ids(model)

    def feed(new: torch.Tensor) -> torch.Tensor:
        nonlocal past, ids
        ids = torch.cat([ids, new], dim=1) if new is not ids else ids
        if use_cache:
            res = model(input_ids=new, past_key_values=past, use_cache=True)
            past = res.past_key_values
        else:
            res = model(input_ids=ids, use_cache=False)
        return res.logits[0, -1]

    logits = feed(pending_ids)
    while True:
        call = find_call(out.text[scanned:], known)
        if call is not None:
            start = scanned + call.start
            scanned += call.end
            emit(Event("call", out.text[start:scanned]))
            if call.tool in pause_on:
                out.text = out.text[:scanned]
                out.pending, out.finish = call, "tool_calls"
                return out
            tool = tools[call.tool]
            if len(out.calls) < max_calls:
                result = tool.run(call.args)
                inserted = wrap(tool.result_tag, result)
            else:
                result, inserted = "error: call limit reached", wrap(RESULT, "error: call limit reached")
            out.calls.append((call, result))
            emit(Event("result", inserted))
            refeed = ""
            overrun = len(out.text) - scanned  # text the call's last token wrote past its closing tag
            if 0 < overrun <= len(last_piece):
                # that token is taken back (text, ids, cache) and the tag's end fed again with the result, so
                # the model reads `</calc><result>` and not e.g. `</calc><<result>`
                out.text, refeed = out.text[:scanned], last_piece[:len(last_piece) - overrun]
                ids = ids[:, :-1]
                if past is not None:
                    past.crop(-1)  # one token off the end (old and new transformers agree on negatives)
            out.text += inserted
            scanned = len(out.text)
            last_piece = ""
            logits = feed(tokenizer(refeed + inserted, add_special_tokens=False, return_tensors="pt").input_ids.to(device))
            continue
        if out.model_tokens >= max_new_tokens:
            out.finish = "length"
            return out
        # tokens the checkpoint forbids (e.g. Quiet-STaR's thought tokens) are never emitted
        tok = _next_token(suppress(logits, banned), temperature, gen)
        out.model_tokens += 1
        if tok == eos:
            return out
        piece = _decoded_piece(tokenizer, ids[0, n_prompt:].tolist(), tok)
        if stop_at_newline and "\n" in piece:
            piece = piece.split("\n", 1)[0]
            out.text += piece
            if piece:
                emit(Event("text", piece))
            return out
        out.text += piece
        last_piece = piece
        emit(Event("text", piece))
        logits = feed(torch.tensor([[tok]], device=device))


def generate_batch(model, tokenizer, prompts: list[str], tools: dict, *, max_new_tokens: int = 64, max_calls: int = 4,
                   batch_size: int = 8, before_loop: Callable[[int], None] | None = None) -> list[Generation]:
    """Greedy answers to many prompts: decoded in batches (`greedy_complete`); an answer whose first line holds a
    complete call of a known tool is answered again alone in the tool loop (after `before_loop(i)`, e.g. to
    select its memory session), so every call sees its real result. Greedy answers without a call are the
    tokens `generate` writes; batched decoding only saves the time."""
    first = greedy_complete(model, tokenizer, prompts, max_new_tokens, batch_size)
    out = []
    for i, (prompt, text) in enumerate(zip(prompts, first)):
        line = text.split("\n", 1)[0]
        if find_call(line, tools) is None:
            out.append(Generation(text=line))
            continue
        if before_loop:
            before_loop(i)
        out.append(generate(model, tokenizer, prompt, tools, max_new_tokens=max_new_tokens, max_calls=max_calls))
    return out


def _pending_from(prefix: str, known: set[str]) -> int:
    """Where to look for a call in an assistant prefix: at its last call if nothing follows that call (a
    call left pending, e.g. the client's own tool in `serve`); calls with their results are history."""
    last, pos = None, 0
    while (call := find_call(prefix[pos:], known)) is not None:
        last = (pos + call.start, pos + call.end)
        pos += call.end
    if last and not prefix[last[1]:].strip():
        return last[0]
    return len(prefix)


def _decoded_piece(tokenizer, before: list[int], tok: int) -> str:
    """The text one more token adds (decoding the pair keeps byte-level and merged characters right)."""
    prev = tokenizer.decode(before[-8:], skip_special_tokens=True)
    both = tokenizer.decode(before[-8:] + [tok], skip_special_tokens=True)
    return both[len(prev):] if both.startswith(prev) else tokenizer.decode([tok], skip_special_tokens=True)
