"""The prompt u of each bake: the runtime's instructions for the bake's tools and two demonstrations in the
project's Q/A format (tool results as the runtime inserts them), interleaved with two plain questions
answered without a call. Demonstrations come from train splits.
The persona prompt is written by the model itself (`persona.py`).
"""
from __future__ import annotations

import re

from ..agent.markup import DOCS, wrap
from ..agent.prompt import instructions
from ..agent.retrieval.cloze import PROMPT, cloze_questions
from ..evals.tasks import get_task
from .queries import qa

STEP = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)")

WRITE_DEMO = ("Q: Remember these records for later: fox=12; owl=40.\n"
              "A: <mem_write>fox=12</mem_write><result>stored</result> <mem_write>owl=40</mem_write>"
              "<result>stored</result> Done.")
READ_DEMO = "Q: What is the value of owl you remembered?\nA: <mem_read>owl</mem_read><result>40</result> 40"
MEMORY_DEMO = WRITE_DEMO + "\n\n" + READ_DEMO
# Plain questions answered without a call, interleaved with the memory demonstrations. Measured on the
# default model (prompted, 32 test probes each; false calls on identity questions, write, read, recall):
# write, chat, read, chat (memory_prompt) 0.00, 0.91, 1.00, 0.50; write, read alone 0.59, 1.00, 0.53, 0.22;
# write, read, chat 0.00, 1.00, 0.22, 0.00 and chat, write, read, read 0.97, 1.00, 0.91, 0.31 (the nearest
# demonstration sets the habit). Without them the memory bake taught calls on "who are you?".
CHAT_DEMOS = ("Q: Hello! How are you today?\nA: I am well, thank you. How can I help?",
              "Q: What is your favourite colour?\nA: I do not have one, but blue is a fine choice.")


def chat_first(demos: list[str]) -> list[str]:
    """chat, demo, chat, demo: the tool and retrieval prompts. Measured on the default model (prompted, 32
    test probes): the tool teacher called on 0.56 of identity questions with its two demonstrations alone,
    0.00 with this order (arithmetic call rate 0.69 -> 0.62; false calls on recall and instruction prompts
    0.28 -> 0.12), while demo, chat, demo, chat stopped its calls altogether (0.00); retrieval 0.34 -> 0.00
    (Python cloze call rate 0.22 -> 0.34). The bakes' plain identity questions (`chat_share`) are only
    negatives if the teacher does not call on them."""
    a, b = demos
    return [CHAT_DEMOS[0], a, CHAT_DEMOS[1], b]


def as_tool_demo(text: str) -> str:
    """Worked steps `a op b = c` written as calculator calls with their results."""
    return STEP.sub(lambda m: f"<calc>{m[1]}{m[2]}{m[3]}</calc><result>{m[4]}</result>", text)


def tool_prompt(runtime) -> str:
    demos = [f"{qa(ex.prompt)}{as_tool_demo(ex.target)}" for ex in get_task("arithmetic").examples("train", 2, 97)]
    return instructions([runtime.tools["calc"]]) + "\n\n" + "\n\n".join(chat_first(demos))


def memory_prompt(runtime) -> str:
    demos = [WRITE_DEMO, CHAT_DEMOS[0], READ_DEMO, CHAT_DEMOS[1]]
    return instructions([runtime.tools["mem_write"], runtime.tools["mem_read"]]) + "\n\n" + "\n\n".join(demos)


def search_words(sentence: str, k: int = 6) -> str:
    """A demonstration's query: the sentence's longest words around the blank."""
    words = [w.strip(".,;:()`'\"") for w in sentence.split() if "____" not in w]
    return " ".join(sorted(words, key=len, reverse=True)[:k])


def retrieval_prompt(runtime) -> str:
    from ..agent.retrieval.corpus import pydoc_passages

    tool = runtime.tools["search"]
    demos = []
    for _, q, word in cloze_questions(pydoc_passages(), 2, 97, "train"):
        query = search_words(q)
        demos.append(f"{qa(PROMPT.format(q))} <search>{query}</search>{wrap(DOCS, tool.fn(query))} {word}")
    return instructions([tool]) + "\n\n" + "\n\n".join(chat_first(demos))


PROMPTS = {"tool": tool_prompt, "memory": memory_prompt, "retrieval": retrieval_prompt}
TOOLS = {"tool": ["calc"], "memory": ["mem_write", "mem_read"], "retrieval": ["search"], "persona": []}
