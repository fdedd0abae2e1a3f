"""Trajectories: answers sampled from the prompted model with the runtime in the loop, as token ids with a
mask of the positions the model wrote (1) and the executor inserted (0: no loss).

The prompted and the unprompted inputs share the answer's ids by construction, `prompt ids + query ids +
answer ids` and `query ids + answer ids`, each piece tokenized on its own; `aligned` checks it (the
reference asserts the same on its masks). Executor results are located in the answer text as the runtime
inserted them (`markup.wrap`), so the mask follows the runtime exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..agent.generate import Generation, generate_batch
from ..agent.markup import RESULT, wrap


@dataclass(frozen=True)
class Query:
    text: str  # the unprompted context x, in the Q/A format ("Q: ...\nA:")
    records: dict[str, str] = field(default_factory=dict)  # memory written before the query (a later episode)
    kind: str = ""  # which generator made it (the bake's own domain or another)


@dataclass
class Trajectory:
    query: Query
    prompt_ids: list[int]  # the bake prompt u and its separator
    query_ids: list[int]
    answer_ids: list[int]
    answer_mask: list[int]  # 1: the model wrote the token; 0: the executor inserted it
    text: str = ""

    def teacher_ids(self) -> tuple[list[int], list[int]]:
        ids = self.prompt_ids + self.query_ids + self.answer_ids
        return ids, [0] * (len(ids) - len(self.answer_mask)) + self.answer_mask

    def student_ids(self) -> tuple[list[int], list[int]]:
        ids = self.query_ids + self.answer_ids
        return ids, [0] * len(self.query_ids) + self.answer_mask


def aligned(t: Trajectory) -> bool:
    """The tokens under the two masks are the same sequence (the reference's assert)."""
    (ti, tm), (si, sm) = t.teacher_ids(), t.student_ids()
    return [i for i, m in zip(ti, tm) if m] == [i for i, m in zip(si, sm) if m] and any(tm)


def segments(g: Generation, tools: dict) -> list[tuple[str, bool]]:
    """The answer as (text, written by the model) pieces: each executed call's inserted result is a piece
    of its own, exactly as the runtime wrote it after the call."""
    out, pos = [], 0
    for call, result in g.calls:
        tag = tools[call.tool].result_tag if call.tool in tools and result != "error: call limit reached" else RESULT
        inserted = wrap(tag, result)
        at = g.text.find(inserted, pos)
        if at < 0:  # cannot happen with the runtime's own generations; a foreign text gets no masking guess
            raise ValueError(f"result {inserted!r} not found in the generation {g.text!r}")
        out += [(g.text[pos:at], True), (inserted, False)]
        pos = at + len(inserted)
    out.append((g.text[pos:], True))
    return [(t, m) for t, m in out if t]


def encode(tokenizer, pieces: list[tuple[str, bool]], end: str = "\n") -> tuple[list[int], list[int]]:
    """Token ids and loss mask of the pieces, plus the line end the model wrote to stop (a target too)."""
    ids, mask = [], []
    for text, written in [*pieces, (end, True)] if end else pieces:
        t = tokenizer(text, add_special_tokens=False).input_ids
        ids += t
        mask += [int(written)] * len(t)
    return ids, mask


def sample(model, tokenizer, runtime, prompt: str, queries: list[Query], temperature: float, max_new_tokens: int,
           seed: int, session: str = "bake", batch_size: int = 8) -> list[Trajectory]:
    """One trajectory per query from the model prompted with `prompt`, tools in the loop (decoded in batches);
    each query in a fresh memory session holding its `records`."""
    head = tokenizer(f"{prompt}\n\n", add_special_tokens=False).input_ids if prompt else []
    sessions = [f"{session}-{seed}-{i}" for i in range(len(queries))]
    for s, q in zip(sessions, queries):
        fresh_memory(runtime, s, q.records)

    gens = generate_batch(model, tokenizer, [f"{prompt}\n\n{q.text}" if prompt else q.text for q in queries],
                          runtime.tools, max_new_tokens=max_new_tokens, max_calls=runtime.spec.max_calls,
                          temperature=temperature, seed=seed, batch_size=batch_size,
                          before_call=in_session(runtime, sessions))
    out = []
    for q, g in zip(queries, gens):
        ids, mask = encode(tokenizer, segments(g, runtime.tools), "\n" if g.finish == "stop" else "")
        if not any(mask):
            continue
        out.append(Trajectory(q, head, tokenizer(q.text, add_special_tokens=False).input_ids, ids, mask, g.text))
    return out


def in_session(runtime, sessions: list[str]):
    """`generate_batch`'s hook: answer i's calls use memory session `sessions[i]`."""

    def select(i: int) -> None:
        if runtime.memory is not None:
            runtime.memory.session = sessions[i]

    return select


def fresh_memory(runtime, session: str, records: dict[str, str]) -> None:
    if runtime.memory is None:
        return
    runtime.memory.session = session
    runtime.memory.clear()
    for k, v in records.items():
        runtime.memory.write(k, v)
