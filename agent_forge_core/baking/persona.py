"""Self-guided persona: the model expands a short seed (name, role, style) into its own persona prompt.

The seed sentence is fixed ("You are <name>, <role>. ..."); the model writes the description that follows
it (greedy, one line), and two identity exchanges in the Q/A format close the prompt. Prompt Pursuit
(Bhargava et al. 2024, §5) re-prompts the baked model with the same prompt and bakes again.
"""
from __future__ import annotations

import re

from ..evals.suite import greedy_complete
from .queries import qa


def seed_sentence(p) -> str:
    return f"You are {p.name}, {p.role}. Your answers are {p.style}."


def expand(model, tokenizer, p) -> str:
    """The model's own description of the persona (greedy, one line, at most `expand_tokens` tokens): asked
    in its chat template when it has one (an instruct model answers that best), else in the Q/A format."""
    if not p.expand_tokens:
        return ""
    ask = f"Write two sentences that describe {p.name}, {p.role}, whose answers are {p.style}."
    if getattr(tokenizer, "chat_template", None):
        ask = tokenizer.apply_chat_template([{"role": "user", "content": ask}], add_generation_prompt=True,
                                            tokenize=False)
    else:
        ask = qa(ask)
    text = greedy_complete(model, tokenizer, [ask], p.expand_tokens, 1)[0].split("\n", 1)[0].strip()
    return re.sub(r"\s+", " ", text)


def persona_prompt(p, description: str) -> str:
    demos = [f"{qa('What is your name?')} My name is {p.name}, {p.role}.",
             f"{qa('Who made you?')} I am {p.name}; I am {p.role}."]
    head = " ".join(x for x in (seed_sentence(p), description) if x)
    return head + "\n\n" + "\n\n".join(demos)


def names_persona(answer: str, name: str) -> bool:
    """An identity answer counts when it names the persona (a whole word, any case)."""
    return re.search(rf"\b{re.escape(name)}\b", answer, re.IGNORECASE) is not None
