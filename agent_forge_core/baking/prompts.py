"""The prompt u of each bake: the runtime's instructions for the bake's tools and two demonstrations in the
project's Q/A format (tool results as the runtime inserts them; memory's interleaved with two plain questions
answered without a call). Demonstrations come from train splits.
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
# demonstration sets the habit). Without them the teacher itself called on identity questions, so the bake's
# identity questions (`chat_share`) taught calls instead of plain answers. The tool and retrieval teachers call on
# them too (0.56 and 0.34); chat, demo, chat, demo brought both to 0.00 (arithmetic calls 0.69 -> 0.62, Python
# cloze calls 0.22 -> 0.34), but in the quick chain the tool bake then did not bake at all (call rate 0.00 vs
# 0.50 prompted, bench/results/baking_quick_chatdemos.json), so those two prompts keep their demonstrations only.
# Baked memory reads the right key but ends its answer at the result (recall 0). The prompted teacher's
# probabilities at the three steps a recall needs (24 teacher-forced probes): `=` after the first key written
# 0.48, a read first on a recall question 0.35, anything but the end of the answer after a found value 0.80.
# Three-record writes, a second write demonstration last and the value restated in a sentence gave 0.76, 0.42,
# 0.89 (prompted, 16 probes: false calls 0.00, write 1.00, read 0.94, recall 0.69 vs 0.44), yet baked recall
# stayed 0 and the quick chain lost persona and tool calls (identity 0.56 vs 0.81, tool calls after the persona
# bake 0.62 vs 0.88; bench/results/baking_quick_memwrites_1x.json), so this prompt stays.
CHAT_DEMOS = ("Q: Hello! How are you today?\nA: I am well, thank you. How can I help?",
              "Q: What is your favourite colour?\nA: I do not have one, but blue is a fine choice.")


def as_tool_demo(text: str) -> str:
    """Worked steps `a op b = c` written `a op b = <calc>a op b</calc><result>c</result>`: the step as the model
    writes it, the call where it would write the result. Measured (prompted call rate, 16 test probes): after the
    default chain's cognate, EvoMerge, Quiet-STaR and loop, which train worked steps, the model wrote its own
    steps under demonstrations that open with the call (`<calc>a op b</calc><result>c</result>`): 0.00; with these
    0.75. On the imported model 0.44 (0.75 with the others): the default chain is what bakes, so these."""
    return STEP.sub(lambda m: f"{m[1]} {m[2]} {m[3]} = <calc>{m[1]}{m[2]}{m[3]}</calc><result>{m[4]}</result>", text)


# Worked demonstrations in the tool prompt. Measured on the quick chain's loop output (prompted call rate, 16 test
# probes): 2 demonstrations (279 prompt tokens) 0.00, 4 (495 tokens) 0.50; the teacher that calls is what the bake
# can bake (with 2 its calls were 0.00 and so was the baked model's).
TOOL_DEMOS = 4


def tool_prompt(runtime) -> str:
    demos = [f"{qa(ex.prompt)}{as_tool_demo(ex.target)}"
             for ex in get_task("arithmetic").examples("train", TOOL_DEMOS, 97)]
    return instructions([runtime.tools["calc"]]) + "\n\n" + "\n\n".join(demos)


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
    return instructions([tool]) + "\n\n" + "\n\n".join(demos)


PROMPTS = {"tool": tool_prompt, "memory": memory_prompt, "retrieval": retrieval_prompt}
TOOLS = {"tool": ["calc"], "memory": ["mem_write", "mem_read"], "retrieval": ["search"], "persona": []}
