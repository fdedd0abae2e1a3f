"""What the model reads: the runtime's instructions (each tool with an example) and the conversation in the
project's one-line Q/A format, the same the evals and the training data use:

    <instructions>

    Q: <user>
    A: <assistant's one-line answer, calls and results inline>

    Q: <user>
    A:
"""
from __future__ import annotations

HEADER = ("You can use tools inside your one-line answer: write a call and its result appears right after it, "
          "then finish the answer.")


def instructions(tools) -> str:
    lines = [HEADER] + [f"- {t.name}: {t.description} Example: {t.example or f'<{t.name}>...</{t.name}><result>...</result>'}"
                        for t in tools]
    return "\n".join(lines)


def conversation(turns: list[tuple[str, str]], question: str, preface: str = "") -> str:
    """Earlier (question, answer) turns, then the open question."""
    blocks = [f"Q: {q}\nA: {a}\n\n" for q, a in turns]
    head = f"{preface}\n\n" if preface else ""
    return head + "".join(blocks) + f"Q: {question}\nA:"
