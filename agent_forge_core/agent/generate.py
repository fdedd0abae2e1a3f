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
cache is an optimisation, not a different model. `generate_batch` runs the same rules (`_Answer`) for many
prompts at once: one left-padded batch and cache, each step feeding every row its next piece (a token, or
a result's tokens) right-aligned in a chunk, the unused chunk slots masked; a token taken back is masked out
of its row rather than cropped from the shared cache. A head common to the batch (the instruction prompt
and its demonstrations) is read once; each row's own tokens follow it after their padding.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..evals.suite import suppress, suppressed_ids
from .markup import RESULT, Call, find_call, wrap


SHARED_MIN = 16  # tokens of common head below which a separate forward for it does not pay


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
    # the answer's token ids exactly as the model read them (after the prompt and prefix), each marked 1 if the
    # model wrote it, 0 if the executor inserted it; `end`: the token that ended the answer (end-of-sequence, or
    # the one holding the newline), written but never read. Training on generated answers (baking) uses these
    # ids: re-tokenizing the text gives other ids where a call meets its result (the call's `>` and the result's
    # `<` are one token `><` when the model writes them, two when the pieces are tokenized apart), another context.
    ids: list[int] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    end: int | None = None


class _Answer:
    """One answer being written: its ids, its text and the rules for each new token and each call."""

    def __init__(self, tokenizer, prompt: str, prefix: str, tools: dict, pause_on, max_new_tokens: int,
                 max_calls: int, stop_at_newline: bool, emit: Callable[[Event], None]):
        self.tok, self.tools, self.pause_on, self.emit = tokenizer, tools, pause_on, emit
        self.max_new_tokens, self.max_calls, self.stop_at_newline = max_new_tokens, max_calls, stop_at_newline
        self.known = set(tools) | set(pause_on)
        self.ids = tokenizer(prompt + prefix, add_special_tokens=False).input_ids
        self.n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        self.out = Generation(text=prefix)
        self.scanned = _pending_from(prefix, self.known)  # offset in out.text after which calls are looked for
        self.last_piece = ""  # the text the model's latest token added
        self.done = False

    def pending_call(self) -> Call | None:
        return find_call(self.out.text[self.scanned:], self.known)

    def run_call(self, call: Call) -> tuple[bool, list[int]]:
        """Run `call` (or pause on it: done); returns (take the last token back, ids to feed next)."""
        out = self.out
        start = self.scanned + call.start
        self.scanned += call.end
        self.emit(Event("call", out.text[start:self.scanned]))
        if call.tool in self.pause_on:
            out.text = out.text[:self.scanned]
            out.pending, out.finish, self.done = call, "tool_calls", True
            return False, []
        tool = self.tools[call.tool]
        if len(out.calls) < self.max_calls:
            result = tool.run(call.args)
            inserted = wrap(tool.result_tag, result)
        else:
            result, inserted = "error: call limit reached", wrap(RESULT, "error: call limit reached")
        out.calls.append((call, result))
        self.emit(Event("result", inserted))
        refeed, take_back, popped = "", False, None
        overrun = len(out.text) - self.scanned  # text the call's last token wrote past its closing tag
        if 0 < overrun <= len(self.last_piece):
            # that token is taken back and the tag's end fed again with the result, so the model reads
            # `</calc><result>` and not e.g. `</calc><<result>`
            out.text, refeed = out.text[:self.scanned], self.last_piece[:len(self.last_piece) - overrun]
            popped = self.ids.pop()
            out.ids.pop(), out.written.pop()
            take_back = True
        out.text += inserted
        self.scanned = len(out.text)
        self.last_piece = ""
        new = self.tok(refeed + inserted, add_special_tokens=False).input_ids
        self.ids += new
        out.ids += new
        # a result fed again from the token taken back keeps that token as the model's where it is the same id
        out.written += [int(i == 0 and t == popped) for i, t in enumerate(new)]
        return take_back, new

    def out_of_tokens(self) -> bool:
        if self.out.model_tokens >= self.max_new_tokens:
            self.out.finish, self.done = "length", True
        return self.done

    def add(self, tok: int, eos: int | None) -> bool:
        """Append the model's token; False when it ended the answer (end-of-sequence or a newline)."""
        self.out.model_tokens += 1
        if tok == eos:
            self.out.end, self.done = tok, True
            return False
        piece = _decoded_piece(self.tok, self.ids[self.n_prompt:], tok)
        if self.stop_at_newline and "\n" in piece:
            piece = piece.split("\n", 1)[0]
            self.out.text += piece
            if piece:
                self.emit(Event("text", piece))
            self.out.end, self.done = tok, True
            return False
        self.out.text += piece
        self.last_piece = piece
        self.ids.append(tok)
        self.out.ids.append(tok)
        self.out.written.append(1)
        call = self.pending_call()
        # text this token wrote past a call's closing tag is taken back when the call runs (`run_call`): it is not
        # shown, or chat and the stream would show `</calc><<result>`
        overrun = len(self.out.text) - (self.scanned + call.end) if call is not None else 0
        shown = piece[:len(piece) - overrun] if overrun > 0 else piece
        if shown:
            self.emit(Event("text", shown))
        return True


def _next_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[..., 0]


@torch.no_grad()
def generate(model, tokenizer, prompt: str, tools: dict, *, prefix: str = "", max_new_tokens: int = 64,
             max_calls: int = 4, stop_at_newline: bool = True, temperature: float = 0.0, seed: int = 0,
             use_cache: bool = True, pause_on: set[str] = frozenset(),
             on_event: Callable[[Event], None] | None = None) -> Generation:
    """Answer `prompt` (+ an assistant `prefix` already written, e.g. a call and a client's result)."""
    device = model.device
    gen = torch.Generator().manual_seed(seed) if temperature > 0 else None
    a = _Answer(tokenizer, prompt, prefix, tools, pause_on, max_new_tokens, max_calls, stop_at_newline,
                on_event or (lambda e: None))
    banned = suppressed_ids(model)
    past = None

    def feed(new: list[int]) -> torch.Tensor:
        nonlocal past
        if not use_cache:
            return model(input_ids=torch.tensor([a.ids], device=device), use_cache=False,
                         logits_to_keep=1).logits[0, -1]
        res = model(input_ids=torch.tensor([new], device=device), past_key_values=past, use_cache=True,
                    logits_to_keep=1)
        past = res.past_key_values
        return res.logits[0, -1]

    logits = feed(a.ids)
    while True:
        call = a.pending_call()
        if call is not None:
            take_back, new = a.run_call(call)
            if a.done:
                return a.out
            if take_back and past is not None:
                past.crop(-1)  # one token off the end (old and new transformers agree on negatives)
            logits = feed(new)
            continue
        if a.out_of_tokens():
            return a.out
        # tokens the checkpoint forbids (e.g. Quiet-STaR's thought tokens) are never emitted
        tok = int(_next_tokens(suppress(logits, banned), temperature, gen))
        if not a.add(tok, tokenizer.eos_token_id):
            return a.out
        logits = feed([tok])


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], tools: dict, *, prefixes: list[str] | None = None,
                   max_new_tokens: int = 64, max_calls: int = 4, stop_at_newline: bool = True,
                   temperature: float = 0.0, seed: int = 0, batch_size: int = 8,
                   before_call: Callable[[int], None] | None = None) -> list[Generation]:
    """`generate` for many prompts, `batch_size` at a time, tools in the loop (`before_call(i)` runs before
    prompt i's call, e.g. to select its memory session). Greedy answers are `generate`'s up to float
    rounding of the padded batch (tested equal); sampled ones draw from one generator per batch."""
    prefixes = prefixes or [""] * len(prompts)
    out: list[Generation] = []
    for lo in range(0, len(prompts), batch_size):
        rows = [_Answer(tokenizer, p, x, tools, frozenset(), max_new_tokens, max_calls, stop_at_newline, lambda e: None)
                for p, x in zip(prompts[lo:lo + batch_size], prefixes[lo:lo + batch_size])]

        def call_hook(j: int, _lo=lo) -> None:
            if before_call:
                before_call(_lo + j)

        _decode_rows(model, tokenizer, rows, temperature, seed + lo, call_hook)
        out += [r.out for r in rows]
    return out


def _decode_rows(model, tokenizer, rows: list[_Answer], temperature: float, seed: int,
                 before_call: Callable[[int], None]) -> None:
    device = model.device
    gen = torch.Generator().manual_seed(seed) if temperature > 0 else None
    banned = suppressed_ids(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # the rows' common head (an instruction prompt) is read once and its cache copied to every row
    shared = min(len(os.path.commonprefix([r.ids for r in rows])), min(len(r.ids) for r in rows) - 1)
    past = None
    if len(rows) > 1 and shared >= SHARED_MIN:
        past = model(input_ids=torch.tensor([rows[0].ids[:shared]], device=device), use_cache=True,
                     logits_to_keep=1).past_key_values
        past.batch_repeat_interleave(len(rows))
    else:
        shared = 0
    chunks: list[list[int]] = [r.ids[shared:] for r in rows]
    pos = [shared] * len(rows)  # each row's next position id
    mask = torch.ones((len(rows), shared), dtype=torch.long, device=device)
    while True:
        width = max(len(c) for c in chunks)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        add = torch.zeros((len(rows), width), dtype=torch.long)
        position = torch.zeros((len(rows), width), dtype=torch.long)
        for j, c in enumerate(chunks):
            if c:  # right-aligned, so every row's newest token is the chunk's last column
                ids[j, width - len(c):] = torch.tensor(c)
                add[j, width - len(c):] = 1
                position[j, width - len(c):] = torch.arange(pos[j], pos[j] + len(c))
                pos[j] += len(c)
        mask = torch.cat([mask, add.to(device)], dim=1)
        # only the newest position's logits are read: the output head over a 49k vocabulary on every position
        # of a chunk of 8 rows x 30 tokens made it 0.26 s instead of 0.22 s (bench/baking_speed.py)
        res = model(input_ids=ids.to(device), attention_mask=mask, position_ids=position.to(device),
                    past_key_values=past, use_cache=True, logits_to_keep=1)
        past = res.past_key_values
        nxt = _next_tokens(suppress(res.logits[:, -1], banned), temperature, gen).tolist()
        chunks = [[] for _ in rows]
        for j, r in enumerate(rows):
            if r.done:
                continue
            call = r.pending_call()
            if call is not None:
                before_call(j)
                take_back, chunks[j] = r.run_call(call)
                if take_back:  # the row's newest token (the last column) leaves its context, its position reused
                    mask[j, -1] = 0
                    pos[j] -= 1
                continue
            if r.out_of_tokens():
                continue
            if r.add(nxt[j], tokenizer.eos_token_id):
                chunks[j] = [nxt[j]]
        if not any(chunks):  # rows that are done feed nothing (a masked slot) while the others go on
            return


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
