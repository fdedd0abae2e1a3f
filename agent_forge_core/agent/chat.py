"""A terminal chat with a forged agent (`agent-forge chat KEY`): answers stream as they are written, tool
calls and results show dimmed, earlier turns stay in the context.

Commands: `/reset` forgets the conversation (not the memory), `/memory` lists what the session remembers,
`/tools` lists the tools, `/quit` (or end of input) leaves. Every turn is logged to the session's episode log.
"""
from __future__ import annotations

import sys
import uuid

from .generate import Event

DIM, RESET = "\x1b[2m", "\x1b[0m"


def chat(model, tokenizer, runtime, max_new_tokens: int = 96, temperature: float = 0.0, stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    color = stdout.isatty()
    dim = (lambda s: f"{DIM}{s}{RESET}") if color else (lambda s: s)
    turns: list[tuple[str, str]] = []
    episode = uuid.uuid4().hex[:8]
    print(f"agent ready: tools {', '.join(runtime.tools) or 'none'}; /tools /memory /reset /quit", file=stdout, flush=True)
    while True:
        print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            print(file=stdout)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            turns.clear()
            episode = uuid.uuid4().hex[:8]
            print(dim("(conversation forgotten; memory kept)"), file=stdout, flush=True)
            continue
        if text == "/memory":
            items = runtime.memory.items() if runtime.memory else {}
            print(dim("\n".join(f"{k} = {v}" for k, v in items.items()) or "(nothing remembered)"), file=stdout, flush=True)
            continue
        if text == "/tools":
            for t in runtime.tools.values():
                print(dim(f"{t.name}: {t.description}"), file=stdout, flush=True)
            continue

        in_tag = [False]

        def show(e: Event) -> None:
            if e.kind == "result":
                print(dim(e.text), end="", file=stdout, flush=True)
            elif e.kind == "text":  # a call is written token by token: its tags show dimmed as they come
                out = []
                for ch in e.text:
                    if ch == "<":
                        in_tag[0] = True
                    out.append(dim(ch) if in_tag[0] else ch)
                    if ch == ">":
                        in_tag[0] = False
                print("".join(out), end="", file=stdout, flush=True)

        g = runtime.answer(model, tokenizer, text, turns, max_new_tokens=max_new_tokens, temperature=temperature,
                           on_event=show)
        print(file=stdout, flush=True)
        turns.append((text, g.text.strip()))
        if runtime.memory:
            runtime.memory.log(episode, "user", text)
            runtime.memory.log(episode, "assistant", g.text.strip())
