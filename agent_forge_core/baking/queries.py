"""Queries for each bake, by split: the bake's own domain plus a share of other prompts (where the prompted
teacher does not call the tool, so the baked model learns when not to).

- tool: arithmetic word problems (no shot: the prompt's demonstrations are the only examples);
- memory: episode 1 "remember these records" (empty memory) and episode 2 "what is the value of k you
  remembered?" (records already stored, as a later conversation finds them);
- retrieval: cloze questions on Python documentation topics of the split (`agent.retrieval.cloze`);
- persona: identity questions, paraphrases held out by hash (`identity_questions`), some after earlier
  turns on other tasks (`persona.train_turns`), so the bake holds further into a conversation;
- other: the eval suite's own prompts (its shots), arithmetic excluded for the tool bake, and for the tool
  bakes (those that teach calls) plain identity questions too (`CHAT`, `chat_share` of them).
Training draws from `train`, probes from `test`; records and paraphrases of the two never coincide.
"""
from __future__ import annotations

import hashlib
import random

from ..agent.prompt import conversation
from ..agent.retrieval.cloze import PROMPT, cloze_questions
from ..evals.tasks import _WORDS, get_task, with_shots
from .trajectories import Query

DEMO_WORDS = ("fox", "owl")  # the memory prompt's demonstrations use these keys
WORDS = [w for w in _WORDS if w not in DEMO_WORDS]

_OPENERS = ["", "Hi! ", "Hello. ", "Quick question: ", "Before we start, ", "Sorry to ask, but ", "Hey there. ",
            "Just curious: "]
_CORES = [
    "what should I call you?", "what are you called?", "who are you?", "what is your name, please?",
    "tell me your name.", "who built you?", "which assistant am I talking to?", "do you have a name?",
    "introduce yourself.", "who am I chatting with?", "what name do you go by?", "who created you?",
    "what kind of assistant are you?", "say who you are in one line.", "whose assistant are you?",
    "identify yourself.", "who is answering me right now?", "what do people call you?",
    "where do you come from?", "are you a person or a program?", "name yourself, please.",
    "what is this assistant's name?", "may I know your name?", "who designed you?",
]


def _held_out(text: str) -> bool:
    return hashlib.sha256(f"persona:{text}".encode()).digest()[0] % 2 == 1


def identity_questions(split: str, n: int, seed: int = 0) -> list[str]:
    """Identity questions: train and test use disjoint question cores (half each, by hash), openers vary."""
    cores = [c for c in _CORES if _held_out(c) == (split != "train")]
    rng = random.Random(f"identity:{split}:{seed}")
    out = []
    for _ in range(n):
        opener, core = rng.choice(_OPENERS), rng.choice(cores)
        sentence_start = not opener or opener.endswith((". ", "! "))
        out.append(opener + (core[0].upper() + core[1:] if sentence_start else core))
    return out


def qa(text: str) -> str:
    return f"Q: {text}\nA:"


def records(rng: random.Random, k: int | None = None) -> dict[str, str]:
    return {w: str(rng.randint(10, 99)) for w in rng.sample(WORDS, k or rng.randint(2, 4))}


def remember_text(recs: dict[str, str]) -> str:
    return qa(f"Remember these records for later: {'; '.join(f'{k}={v}' for k, v in recs.items())}.")


def recall_text(key: str) -> str:
    return qa(f"What is the value of {key} you remembered?")


def suite_queries(tasks: list[str], split: str, n: int, shots: int, seed: int) -> list[Query]:
    if n <= 0:  # other_share 0: none
        return []
    per = -(-n // len(tasks))
    out = [Query(p, kind=t) for t in tasks for p, _ in with_shots(get_task(t), split, per, shots, seed)]
    random.Random(seed).shuffle(out)
    return out[:n]


def distractors(k: int, rng: random.Random, split: str = "test") -> list[tuple[str, str]]:
    """k earlier Q/A turns on other tasks (questions of `split` with their gold answers)."""
    out = []
    for _ in range(k):
        task = get_task(rng.choice(["arithmetic", "recall", "instruction"]))
        ex = task.examples(split, 1, rng.randrange(10**6))[0]
        out.append((ex.prompt, ex.target.strip()))
    return out


def own_queries(bake: str, split: str, n: int, seed: int, turns: tuple[int, ...] = (0,)) -> list[Query]:
    """`turns`: the persona's identity question comes after k earlier turns, k drawn from it per query."""
    rng = random.Random(f"{bake}:{split}:{seed}")
    if bake == "tool":
        return [Query(qa(ex.prompt), kind=bake) for ex in get_task("arithmetic").examples(split, n, seed)]
    if bake == "memory":
        out = []
        for i in range(n):
            recs = records(rng)
            out.append(Query(remember_text(recs), kind=bake) if i % 2 == 0 else
                       Query(recall_text(rng.choice(list(recs))), recs, kind=bake))
        return out
    if bake == "retrieval":
        from ..agent.retrieval.corpus import pydoc_passages

        return [Query(qa(PROMPT.format(q)), kind=bake) for _, q, _ in cloze_questions(pydoc_passages(), n, seed, split)]
    if bake == "persona":
        return [Query(conversation(distractors(rng.choice(turns), rng, split), q), kind=bake)
                for q in identity_questions(split, n, seed)]
    raise ValueError(f"unknown bake {bake!r}")


CHAT = "chat"  # identity questions asked plainly: a conversation where no tool belongs
ANCHOR_TASKS = ("recall", "instruction")  # the eval suite's tasks no bake teaches (arithmetic is the tool bake's)
OTHER_TASKS = {"tool": ["recall", "instruction"], "memory": ["arithmetic", "recall"],
               "retrieval": ["arithmetic", "recall"], "persona": ["arithmetic", "recall", "instruction"]}


def other_queries(bake: str, split: str, n: int, shots: int, seed: int, chat_share: float = 0.0) -> list[Query]:
    """`n` prompts where the bake's tool does not belong: `chat_share` of them plain identity questions
    (`CHAT`), the rest shared evenly among `OTHER_TASKS[bake]`. The chat share is there because the tool bakes
    taught calls on questions they never saw: after them the model answered "who are you?" with memory calls.
    Measured (quick profile, 16 probes): the prompted memory teacher itself called on 62% of identity questions,
    so more of them (other_share 0.4, chat_share 0.5) did not help: false calls 0.81 baked, persona 0.19; the
    memory prompt now demonstrates plain answers (`prompts.CHAT_DEMOS`). The tool and retrieval teachers still
    call on 56% and 34% of them (32 probes; why their prompts keep that: `prompts.py`)."""
    n_chat = round(n * chat_share)
    chat = [Query(qa(q), kind=CHAT) for q in identity_questions(split, n_chat, seed)]
    return chat + suite_queries(OTHER_TASKS[bake], split, n - n_chat, shots, seed)


def training_queries(bake: str, n: int, other_share: float, shots: int, seed: int,
                     turns: tuple[int, ...] = (0,), chat_share: float = 0.0) -> list[Query]:
    n_other = round(n * other_share)
    out = own_queries(bake, "train", n - n_other, seed, turns) + other_queries(bake, "train", n_other, shots, seed,
                                                                               chat_share)
    random.Random(seed).shuffle(out)
    return out
