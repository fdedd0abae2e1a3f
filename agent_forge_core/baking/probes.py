"""What each bake is measured by, on test splits, for one condition: a model, with or without the bake's
prompt, answering with the runtime's tools in the loop (greedy).

- tool: on arithmetic, the calculator call rate, call validity (the result is a number), the share of calls
  that hold an expression (`call_expression`: an operator between two numbers; the quick chain's agents wrote
  `<calc>14</calc>`, the step's result where its expression belongs, on about half their calls), the share
  that compute a gold worked step (an expression whose result is one of the example's steps), accuracy with
  the executor; the false-call rate on recall and instruction prompts.
- memory: episode 1 shows records in an empty session (write rate); episode 2, a new context in the same
  session, asks for one (read rate, recall accuracy: chance about 1/90); the false-call rate on plain
  identity questions (any tool call).
- retrieval: the search call rate on Python-documentation cloze questions of held-out topics and on
  arithmetic (false calls); exact match of the answer after the last tool result.
- persona: the share of identity answers (held-out paraphrases) that name the persona after k distractor
  turns, for each k (prompt forgetting: the prompt stays first, the probe moves away from it).
Answers are decoded in batches with the tools in the loop (`generate_batch`). With `primary_only` a probe
decodes only what its primary metric (`PRIMARY`) needs: the forgetting measurements keep nothing else, and the
false-call prompts, identity chat and distractor turns were a third of the quick chain's probe time.
"""
from __future__ import annotations

import random
import re
import uuid

from ..agent.generate import Generation, generate_batch
from ..agent.markup import strip_markup
from ..agent.prompt import conversation
from ..agent.retrieval.cloze import PROMPT, cloze_questions, first_word
from ..evals.tasks import get_task
from .persona import names_persona
from .queries import distractors, identity_questions, qa, recall_text, records, remember_text, suite_queries
from .trajectories import fresh_memory, in_session

NUMBER = re.compile(r"-?\d+(\.\d+)?")
EXPRESSION = re.compile(r"\d\s*[-+*/]\s*\(?\s*-?\d")  # an operator between two numbers: the call computes something


def calc_call(expression: str, result: str, target: str) -> tuple[bool, bool]:
    """(the call holds an expression, it computes one of `target`'s worked steps `a op b = r`). A call that only
    restates a number (`<calc>14</calc>`) computes nothing, whatever its result."""
    holds = EXPRESSION.search(expression) is not None
    return holds, holds and result in re.findall(r"= (-?\d+)", target)


def _with(prompt: str, text: str) -> str:
    return f"{prompt}\n\n{text}" if prompt else text


def answer_all(model, tok, runtime, texts: list[str], max_new_tokens: int, sessions: list[str] | None = None,
               tools: dict | None = None):
    """Greedy answers with the tools in the loop (`tools`: the runtime's unless given); each in its own memory
    session when `sessions` are given. A runtime with experts (a later stage's checkpoint: the final agent) answers
    each text with the expert its dispatcher picks, as chat and serve do."""
    out: list = [None] * len(texts)
    for block, ix in runtime.routed(texts):
        hook = in_session(runtime, [sessions[i] for i in ix]) if sessions else None
        with block:
            gens = generate_batch(model, tok, [texts[i] for i in ix], runtime.tools if tools is None else tools,
                                  max_new_tokens=max_new_tokens, max_calls=runtime.spec.max_calls, before_call=hook)
        for i, g in zip(ix, gens):
            out[i] = g
    return out


def _rate(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def after_results(g: Generation) -> str:
    """The model's own answer: what it wrote after the last tool result."""
    if not g.calls:
        return g.text
    last = g.text.rfind("</docs>") if "</docs>" in g.text else g.text.rfind("</result>")
    return g.text[last:].split(">", 1)[1] if last >= 0 else g.text


def read_back(g: Generation) -> str:
    """The value an answer that ends at a memory read's result hands the user: that result (what a tool that
    returns its output directly gives back); empty when the model wrote on after it or made no read."""
    if not g.calls or after_results(g).strip() or g.calls[-1][0].tool != "mem_read":
        return ""
    return g.calls[-1][1]


def probe_tool(model, tok, runtime, prompt: str, n: int, seed: int, shots: int, primary_only: bool = False,
               **_) -> dict[str, float]:
    arith = get_task("arithmetic")
    exs = arith.examples("test", n, seed)
    gens = answer_all(model, tok, runtime, [_with(prompt, qa(ex.prompt)) for ex in exs], 48)
    out = {"call_rate": _rate(any(c.tool == "calc" for c, _ in g.calls) for g in gens)}
    if primary_only:
        return out
    # each calculator result with its form: an expression, and one that computes a gold worked step
    calc = [(r, *calc_call(c.args, r, ex.target)) for g, ex in zip(gens, exs) for c, r in g.calls if c.tool == "calc"]
    others = suite_queries(["recall", "instruction"], "test", n, shots, seed)
    false = answer_all(model, tok, runtime, [_with(prompt, q.text) for q in others], 24)
    return {**out, "call_validity": _rate(NUMBER.fullmatch(r) is not None for r, _, _ in calc),
            "call_expression": _rate(expr for _, expr, _ in calc),
            "call_gold_step": _rate(gold for _, _, gold in calc),
            "accuracy": _rate(arith.check(strip_markup(g.text), ex) for g, ex in zip(gens, exs)),
            "false_call_rate": _rate(bool(g.calls) for g in false)}


def probe_memory(model, tok, runtime, prompt: str, n: int, seed: int, shots: int, primary_only: bool = False,
                 **_) -> dict[str, float]:
    rng = random.Random(f"memory-probe:{seed}")
    sets = [records(rng, 3) for _ in range(n)]
    keys = [rng.choice(list(r)) for r in sets]
    sessions = [f"probe-{uuid.uuid4().hex}" for _ in range(n)]
    for s in sessions:
        fresh_memory(runtime, s, {})
    first = answer_all(model, tok, runtime, [_with(prompt, remember_text(r)) for r in sets], 64, sessions=sessions)
    second = answer_all(model, tok, runtime, [_with(prompt, recall_text(k)) for k in keys], 24, sessions=sessions)
    for s in sessions:
        fresh_memory(runtime, s, {})
    out = {"recall": _rate((m := NUMBER.search(after_results(g))) is not None and m.group(0) == r[k]
                           for g, r, k in zip(second, sets, keys))}
    if primary_only:
        return out
    chat = answer_all(model, tok, runtime, [_with(prompt, qa(q)) for q in identity_questions("test", n, seed)], 16)
    return {"false_call_rate": _rate(bool(g.calls) for g in chat),
            "write_rate": _rate(any(c.tool == "mem_write" for c, _ in g.calls) for g in first),
            "read_rate": _rate(any(c.tool == "mem_read" for c, _ in g.calls) for g in second), **out,
            # not the primary metric: the right value read back but never stated (the answer ends at the result)
            "recall_read_back": _rate(read_back(g) == r[k] for g, r, k in zip(second, sets, keys))}


def probe_retrieval(model, tok, runtime, prompt: str, n: int, seed: int, shots: int, primary_only: bool = False,
                    **_) -> dict[str, float]:
    from ..agent.retrieval.corpus import pydoc_passages

    qs = cloze_questions(pydoc_passages(), n, seed, "test")
    gens = answer_all(model, tok, runtime, [_with(prompt, qa(PROMPT.format(q))) for _, q, _ in qs], 24)
    out = {"call_rate_python": _rate(any(c.tool == "search" for c, _ in g.calls) for g in gens)}
    if primary_only:
        return out
    arith = get_task("arithmetic").examples("test", n, seed)
    false = answer_all(model, tok, runtime, [_with(prompt, qa(ex.prompt)) for ex in arith], 24)
    return {**out, "exact_match": _rate(first_word(after_results(g)) == w.lower() for g, (_, _, w) in zip(gens, qs)),
            "call_rate_arithmetic": _rate(any(c.tool == "search" for c, _ in g.calls) for g in false)}


def probe_persona(model, tok, runtime, prompt: str, n: int, seed: int, shots: int, name: str = "Forge",
                  turns: tuple[int, ...] = (0, 2, 4, 8), n_turns: int | None = None, primary_only: bool = False,
                  **_) -> dict[str, float]:
    """`n` questions without distractors, `n_turns` (default n) after each k > 0."""
    out = {}
    for k in (0,) if primary_only else turns:
        qs = identity_questions("test", n if k == 0 else (n_turns or n), seed)
        rng = random.Random(f"distract:{seed}:{k}")
        texts = [conversation(distractors(k, rng), q, prompt) for q in qs]
        answers = answer_all(model, tok, runtime, texts, 16, tools={})
        out[f"identity_k{k}"] = _rate(names_persona(a.text, name) for a in answers)
    return out


PROBES = {"tool": probe_tool, "memory": probe_memory, "retrieval": probe_retrieval, "persona": probe_persona}
PRIMARY = {"tool": "call_rate", "memory": "recall", "retrieval": "call_rate_python", "persona": "identity_k0"}


def recovery(base: dict, prompted: dict, baked: dict) -> dict[str, float | None]:
    """(baked − base) / (prompted − base) per metric; None where the prompt itself changed nothing."""
    out = {}
    for m, v in baked.items():
        gap = prompted.get(m, float("nan")) - base.get(m, float("nan"))
        out[m] = (v - base[m]) / gap if abs(gap) > 1e-9 else None
    return out


def probe_tables(probes: dict[str, dict], forgetting: dict[str, dict]) -> dict[str, dict]:
    """The forge report's tables: every probe metric of each bake in its conditions (input without and with the
    prompt, baked, any pursuit round, the stage's output) with the recovery ratio, and the forgetting matrix (each
    bake's primary metric after every later bake)."""
    rows, conds = [], list(dict.fromkeys(c for p in probes.values() for c in p))
    for b, by_cond in probes.items():
        rec = recovery(by_cond["base"], by_cond["prompted"], by_cond["baked"]) if "baked" in by_cond else {}
        for m in by_cond["base"]:
            rows.append({"bake": b, "metric": m, **{c: v[m] for c, v in by_cond.items()},
                         "recovery": "-" if rec.get(m) is None else rec[m]})
    bakes = list(dict.fromkeys(b for vals in forgetting.values() for b in vals))
    return {"probes: input without / with the bake's prompt, baked without it (right after its bake; output: after "
            "every bake); recovery = (baked - base) / (prompted - base)": {
                "columns": ["bake", "metric", *conds, "recovery"], "rows": rows},
            "forgetting: each bake's primary metric (column) after the bake of the row": {
                "columns": ["after", *bakes], "rows": [{"after": n, **vals} for n, vals in forgetting.items()]}}
