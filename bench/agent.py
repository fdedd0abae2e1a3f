"""Benchmark: the agent runtime on the default model, prompted (its instructions as the preface, no training):
the numbers the baking stage must then reach without the prompt.

1. Calculator: arithmetic accuracy on the test families without tools (the suite's 1-shot prompt, greedy) and
   with the runtime's instructions as the preface and the tool loop, in two conditions: the same prompt (its
   shot solves by hand) and the shot's steps written as calls (a demonstration); call rate, call validity
   (calls that return a number) and the false-call rate on recall and instruction prompts (no call needed).
2. Memory across sessions: episode 1 shows a record set and asks to remember it (`mem_write`); episode 2, a
   new context in the same session, asks for one value (`mem_read`); with the instructions alone and with
   one demonstrated exchange. Write rate, read rate, recall accuracy; beside the in-context baseline
   (records and question in one prompt).
3. Retrieval: cloze questions from held-out pydoc topics (a passage's rarest word blanked): recall@1/@3 of
   the index (BM25; BM25+dense fused) for the cloze text, and exact match closed-book vs with the top passages
   inserted (`<docs>`).
4. Server: time to first token, tokens/s and requests/s at 1 and 4 concurrent clients over HTTP (streaming),
   beside plain `transformers` generate on the same prompts.
Writes bench/results/agent.json. Usage: python bench/agent.py [--n 128] [--n-memory 64] [--parts calculator,memory,retrieval,server] [--store DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from agent_forge_core.agent.generate import generate
from agent_forge_core.agent.markup import strip_markup
from agent_forge_core.agent.retrieval.cloze import PROMPT, cloze_questions, first_word
from agent_forge_core.agent.retrieval.corpus import pydoc_passages
from agent_forge_core.agent.retrieval.index import RetrievalIndex, docs_text
from agent_forge_core.agent.runtime import Runtime
from agent_forge_core.agent.settings import AgentSettings, RuntimeSpec
from agent_forge_core.baking.prompts import MEMORY_DEMO, as_tool_demo
from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.evals.suite import greedy_complete, standard_error
from agent_forge_core.evals.tasks import get_task, with_shots
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.runner import run_stage_on


def acc(xs) -> dict:
    xs = list(xs)
    k = sum(xs)
    return {"value": k / max(len(xs), 1), "se": standard_error(k, len(xs)), "n": len(xs)}


def tool_run(model, tok, rt: Runtime, items, prompt_of, arith) -> dict:
    correct, calls, valid = [], [], []
    for p, ex in items:
        g = generate(model, tok, f"{rt.preface()}\n\n{prompt_of(p)}", rt.tools, max_new_tokens=48,
                     max_calls=rt.spec.max_calls)
        correct.append(arith.check(strip_markup(g.text), ex))
        calc = [r for c, r in g.calls if c.tool == "calc"]
        calls.append(bool(calc))
        valid += [bool(re.fullmatch(r"-?\d+(\.\d+)?", r)) for r in calc]
    return {"accuracy": acc(correct), "call_rate": acc(calls), "call_validity": acc(valid)}


def calculator(model, tok, rt: Runtime, n: int) -> dict:
    """Arithmetic without tools (the suite's 1-shot prompt, greedy), then with the runtime's instructions as the
    preface: (a) the same 1-shot prompt, whose shot solves by hand; (b) the shot's steps written as calls."""
    arith = get_task("arithmetic")
    items = with_shots(arith, "test", n, 1, 1234)
    plain = greedy_complete(model, tok, [p for p, _ in items], 48, 16)
    out = {"accuracy_without_tools": acc(arith.check(c, ex) for c, (_, ex) in zip(plain, items)),
           "instructions_only": tool_run(model, tok, rt, items, lambda p: p, arith),
           "instructions_and_tool_demo": tool_run(model, tok, rt, items, as_tool_demo, arith)}
    false_calls = []
    for name in ("recall", "instruction"):
        for p, _ in with_shots(get_task(name), "test", n // 2, 1, 1234):
            g = generate(model, tok, f"{rt.preface()}\n\n{p}", rt.tools, max_new_tokens=24, max_calls=rt.spec.max_calls)
            false_calls.append(bool(g.calls))
    out["false_call_rate"] = acc(false_calls)
    return out


def memory(model, tok, rt: Runtime, n: int) -> dict:
    """Episode 1 shows records and asks to remember them; episode 2 (a new context, same session) asks for one.
    With the instructions alone, and with a one-exchange demonstration of both tools before each episode."""
    from agent_forge_core.evals.tasks import _WORDS, Example

    recall = get_task("recall")
    out = {}
    baseline = []
    for cond, demo in (("instructions_only", ""), ("instructions_and_tool_demo", MEMORY_DEMO + "\n\n")):
        rng = random.Random(7)
        writes, reads, correct = [], [], []
        for i in range(n):
            pairs = {k: str(rng.randint(10, 99)) for k in rng.sample([w for w in _WORDS if w not in ("fox", "owl")], 4)}
            key = rng.choice(list(pairs))
            ex = Example("", f" {pairs[key]}", pairs[key])
            rt.memory.session = f"bench-{cond}-{i}"  # a fresh session per record set
            rt.memory.clear()
            records = "; ".join(f"{k}={v}" for k, v in pairs.items())
            g1 = generate(model, tok, f"{rt.preface()}\n\n{demo}Q: Remember these records for later: {records}.\nA:",
                          rt.tools, max_new_tokens=64, max_calls=8)
            writes.append(any(c.tool == "mem_write" for c, _ in g1.calls))
            g2 = generate(model, tok, f"{rt.preface()}\n\n{demo}Q: What is the value of {key} you remembered?\nA:",
                          rt.tools, max_new_tokens=24, max_calls=rt.spec.max_calls)
            reads.append(any(c.tool == "mem_read" for c, _ in g2.calls))
            correct.append(recall.check(strip_markup(g2.text), ex))
            if not demo:
                ctx = greedy_complete(model, tok, [f"Q: Records: {records}. What is the value of {key}?\nA:"], 8, 1)[0]
                baseline.append(recall.check(ctx, ex))
        out[cond] = {"write_rate": acc(writes), "read_rate": acc(reads), "cross_session_recall": acc(correct)}
    out["in_context_recall"] = acc(baseline)
    return out


def retrieval(model, tok, n: int) -> dict:
    passages = pydoc_passages()
    sparse = RetrievalIndex.build(passages, "pydoc")
    t0 = time.time()
    dense = RetrievalIndex.build(passages, "pydoc", (model, tok), "default")
    dense_build = time.time() - t0
    qs = cloze_questions(passages, n)
    out = {"questions": len(qs), "dense_index_build_s": dense_build}
    for name, index in (("bm25", sparse), ("bm25+dense", dense)):
        ranks = []
        for i, q, _ in qs:
            ids = [passages.index(p) for p in index.search(q.replace("____", " "), k=3)]
            ranks.append(ids.index(i) + 1 if i in ids else None)
        out[f"recall@1 {name}"] = acc(r == 1 for r in ranks)
        out[f"recall@3 {name}"] = acc(r is not None for r in ranks)
    prompts_closed = [f"Q: {PROMPT.format(q)}\nA:" for _, q, _ in qs]
    prompts_rag = [f"<docs>{docs_text(sparse.search(q.replace('____', ' '), k=2))}</docs>\n{p}"
                   for (_, q, _), p in zip(qs, prompts_closed)]
    for name, prompts in (("closed_book", prompts_closed), ("with_retrieval", prompts_rag)):
        answers = greedy_complete(model, tok, prompts, 6, 8)
        out[f"exact_match {name}"] = acc(first_word(a) == w.lower()
                                         for a, (_, _, w) in zip(answers, qs))
    return out


def server_speed(model, tok, rt: Runtime, requests: int = 8, tokens: int = 32) -> dict:
    import httpx
    import uvicorn

    from agent_forge_core.agent.server import AgentServer, create_app

    prompts = [f"Q: {ex.prompt}\nA:" for ex in get_task("recall").examples("test", requests, 5)]
    # the baseline: plain transformers generate, one prompt at a time, no tools, same token budget
    t0 = time.time()
    gen_tokens = 0
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        gen_tokens += out.shape[1] - ids.shape[1]
    base_s = time.time() - t0
    spec = RuntimeSpec(tools=rt.spec.tools, instructions=False, max_calls=0)
    server = AgentServer(model, tok, Runtime(spec, rt.tools, rt.memory, rt.index), "default", 8, tokens)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=uv.run, daemon=True).start()
    while not uv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    def one(q: str) -> tuple[float, float, int]:
        t = time.time()
        first, n = None, 0
        body = {"messages": [{"role": "user", "content": q}], "max_tokens": tokens, "stream": True}
        with httpx.stream("POST", url, json=body, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                    first = first or time.time() - t
                    n += 1
        return first or math.nan, time.time() - t, n

    out = {"baseline_transformers_generate": {"tokens_per_s": gen_tokens / base_s, "s_per_request": base_s / requests}}
    for conc in (1, 4):
        t0 = time.time()
        with ThreadPoolExecutor(conc) as pool:
            res = list(pool.map(one, [p.split("\n")[0][3:] for p in prompts]))
        wall = time.time() - t0
        out[f"server_{conc}_clients"] = {"ttft_s_median": sorted(r[0] for r in res)[len(res) // 2],
                                         "tokens_per_s": sum(r[2] for r in res) / wall, "requests_per_s": len(res) / wall}
    uv.should_exit = True
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--store", default=".forge/bench-store")
    ap.add_argument("--n-memory", type=int, default=64, help="record sets per memory condition")
    ap.add_argument("--parts", default="calculator,memory,retrieval,server")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    torch.manual_seed(0)
    s = load_settings(overrides=[f"store.url={args.store}/store", f"work_dir={args.store}/work", *args.overrides])
    ctx = make_context(s)
    (key,) = run_stage_on("import", [], ctx).outputs
    model, tok = load_model(str(ctx.store.get(key)))
    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime.open(None, model, tok, AgentSettings(memory=f"{tmp}/memory.sqlite", index_dir=f"{tmp}/idx"))
        out = Path("bench/results/agent.json")
        # a part not run keeps its numbers from the previous run
        result = json.loads(out.read_text()) if out.is_file() else {}
        result |= {"model": s.model.source, "n": args.n, "n_memory": args.n_memory}
        parts = {"calculator": lambda: calculator(model, tok, rt, args.n),
                 "memory": lambda: memory(model, tok, rt, args.n_memory),
                 "retrieval": lambda: retrieval(model, tok, args.n),
                 "server": lambda: server_speed(model, tok, rt)}
        for name in args.parts.split(","):
            fn = parts[name]
            t0 = time.time()
            result[name] = fn()
            result[name]["wall_s"] = time.time() - t0
            print(name, json.dumps(result[name], indent=1), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
