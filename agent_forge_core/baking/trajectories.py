"""Trajectories: answers sampled from the prompted model with the runtime in the loop, as token ids with a
mask of the positions the model wrote (1) and the executor inserted (0: no loss).

The prompted and the unprompted inputs share the answer's ids by construction, `prompt ids + query ids +
answer ids` and `query ids + answer ids`; `aligned` checks it (the reference asserts the same on its masks).
The answer's ids are the generator's own (`Generation.ids`): the tokens the model read while writing it, with
the executor's results as the runtime fed them (mask 0). Re-tokenizing the answer text piece by piece gave
other ids where a call meets its result (the model writes the call's `>` and the next tag's `<` as one
token `><` and reads the result after it; the pieces tokenized apart read `>` then `<result>`), and the
student, trained on that context, met the other one when it answered (measured on the memory bake: after a
found value the baked model's next-token probabilities of going on / ending were 0.26 / 0.23 in the
re-tokenized context, 0.24 / 0.33 in the generator's, so greedy answers ended at the result).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..agent.generate import Generation, generate_batch


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


def answer_ids(g: Generation) -> tuple[list[int], list[int]]:
    """The answer's ids as the model read them while writing it, and its mask (1: written by the model, 0:
    inserted by the executor), plus the token that ended it (a target: the model wrote it) when it stopped."""
    if g.end is None:
        return list(g.ids), list(g.written)
    return [*g.ids, g.end], [*g.written, 1]


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
        ids, mask = answer_ids(g)
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
