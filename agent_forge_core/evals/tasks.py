"""Verifiable task generators in phrasing families, with seeded, family-disjoint splits.

Each task draws a problem (numbers, words) and renders it with one of its *families*: ways of saying the
same kind of problem with other entities, verbs, sentence orders or record formats. Every family belongs
to exactly one split, so the validation and test splits ask in wordings that training never saw: a gain
there means the skill transferred, not the template. The target and answer format is the same in every
family (arithmetic: worked steps, then `Answer: N`; recall: the number; instruction: the exact output),
so each task's checker stays exact and needs no judge model.

Splits: train draws from the train families, validation and test each from their own; within a split a
seeded stream (`<task>:<split>:<seed>`) picks the family, then the problem, and repeated prompts are
skipped. `EVAL_VERSION` is part of every checkpoint key: bump it whenever a generator changes.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Callable

from .driving import DRIVING
from .task_types import SPLITS, Example, Family, Task, first_line, split_of  # noqa: F401 (SPLITS, split_of: re-exported)

EVAL_VERSION = 2  # 2: phrasing families with family-disjoint splits, out-of-domain perplexity, standard errors
TASK_NAMES = ("arithmetic", "recall", "instruction")
OPT_IN = {"driving": DRIVING}  # not evaluated unless `eval.tasks` names them
OPT_IN_TASKS = tuple(OPT_IN)


def plural(k: int, one: str, many: str) -> str:
    return f"{k} {one if k == 1 else many}"


_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kira", "Leo", "Mia", "Nour"]
_ITEMS = ["apples", "marbles", "stamps", "coins", "books", "shells", "cards", "pencils", "stickers", "beads"]
_GOODS = ["loaves", "jars", "candles", "lamps", "baskets", "kites", "mugs", "scarves"]
_WORDS = [
    "cat", "sun", "box", "pen", "map", "cup", "key", "owl", "fig", "jar", "hat", "ink", "oak", "rug", "van",
    "web", "yak", "zip", "bee", "cow", "dog", "egg", "fan", "gem", "hen", "ice", "jam", "kit", "lid", "mud",
]


# --- arithmetic ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Program:
    start: int
    ops: tuple[tuple[str, int], ...]  # ("add" | "sub" | "mul", k)


def program(rng: random.Random, start_max: int = 20, steps: tuple[int, int] = (2, 3), add_max: int = 15,
            mul_max: int = 30) -> Program:
    """Two or three steps from a start in 2..20; subtraction keeps the count positive, multiplication (by 2
    or 3) only while the count is at most 30. The bounds are parameters for the loop's graded generators; these
    defaults are the arithmetic task's."""
    value = rng.randint(2, start_max)
    start, ops = value, []
    for _ in range(rng.randint(*steps)):
        op = rng.choice(["add", "sub", "mul"] if value <= mul_max else ["add", "sub"])
        if op == "add":
            k = rng.randint(2, add_max)
            value += k
        elif op == "sub":
            k = rng.randint(1, max(1, value - 1))
            value -= k
        else:
            k = rng.choice([2, 3])
            value *= k
        ops.append((op, k))
    return Program(start, tuple(ops))


def _worked(p: Program) -> tuple[str, int]:
    """The target: each step as `a op k = b.`, then `Answer: N`."""
    value, steps = p.start, []
    for op, k in p.ops:
        new = value + k if op == "add" else value - k if op == "sub" else value * k
        steps.append(f"{value} {'+' if op == 'add' else '-' if op == 'sub' else '*'} {k} = {new}.")
        value = new
    return " " + " ".join(steps) + f" Answer: {value}", value


def _times(k: int, double: str, triple: str) -> str:
    return double if k == 2 else triple


def _story(p: Program, opening: str, say: dict, question: str) -> str:
    """Opening sentence, one sentence per step (`say[op](k)`), then the question."""
    return " ".join([opening, *(say[o](k) for o, k in p.ops), question])


def _a_items(rng, p):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    return _story(p, f"{name} has {p.start} {item}.", {
        "add": lambda k: f"Then {k} more are added.", "sub": lambda k: f"Then {k} are given away.",
        "mul": lambda k: f"Then the number of {item} is multiplied by {k}."}, f"How many {item} are there now?")


def _a_shop(rng, p):
    good = rng.choice(_GOODS)
    return _story(p, f"A shop has {p.start} {good} in stock.", {
        "add": lambda k: f"A delivery brings {k} more.", "sub": lambda k: f"It sells {k}.",
        "mul": lambda k: f"Then its stock {_times(k, 'doubles', 'triples')}."}, f"How many {good} does the shop have now?")


def _a_question_first(rng, p):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    say = {"add": lambda k: f"gets {k} more", "sub": lambda k: f"loses {k}", "mul": lambda k: f"ends up with {k} times as many"}
    return f"How many {item} does {name} end up with? {name} starts with {p.start}, " + \
        ", then ".join(say[o](k) for o, k in p.ops) + "."


def _a_log(rng, p):
    item = rng.choice(_ITEMS)
    say = {"add": lambda k: f"plus {k}", "sub": lambda k: f"minus {k}", "mul": lambda k: f"times {k}"}
    return f"Count log for the {item} box: start {p.start}; " + "; ".join(say[o](k) for o, k in p.ops) + \
        ". What is the final count?"


def _a_game(rng, p):
    name = rng.choice(_NAMES)
    return _story(p, f"{name} has {p.start} points in a game.", {
        "add": lambda k: f"{name} wins {plural(k, 'bonus point', 'bonus points')}.",
        "sub": lambda k: f"{name} loses {plural(k, 'point', 'points')}.",
        "mul": lambda k: f"The score is then {_times(k, 'doubled', 'tripled')}."}, f"How many points does {name} have now?")


def _a_tank(rng, p):
    return _story(p, f"A tank holds {p.start} liters of water.", {
        "add": lambda k: f"{plural(k, 'liter is', 'liters are')} poured in.",
        "sub": lambda k: f"{plural(k, 'liter drains', 'liters drain')} out.",
        "mul": lambda k: f"Then the amount of water {_times(k, 'doubles', 'triples')}."}, "How many liters are in the tank now?")


def _a_bank(rng, p):
    name = rng.choice(_NAMES)
    return _story(p, f"{name}'s account holds {p.start} dollars.", {
        "add": lambda k: f"{name} deposits {plural(k, 'dollar', 'dollars')}.",
        "sub": lambda k: f"{name} withdraws {plural(k, 'dollar', 'dollars')}.",
        "mul": lambda k: f"Later the balance is multiplied by {k}."}, "How many dollars are in the account?")


def _a_bus(rng, p):
    return _story(p, f"A bus leaves the depot with {p.start} passengers.", {
        "add": lambda k: f"At a stop, {plural(k, 'person gets', 'people get')} on.",
        "sub": lambda k: f"At the next stop, {plural(k, 'person gets', 'people get')} off.",
        "mul": lambda k: f"Then there are {k} times as many passengers."}, "How many passengers are on the bus now?")


def arithmetic_family(render, program: Callable[[random.Random], Program] = program) -> Callable[[random.Random], Example]:
    def make(rng: random.Random) -> Example:
        p = program(rng)
        target, value = _worked(p)
        return Example(render(rng, p), target, str(value))

    return make


# --- recall ----------------------------------------------------------------------------------------------

def recall_family(render, records: tuple[int, int] = (4, 6)) -> Callable[[random.Random], Example]:
    """In-context key-value recall: 4-6 records, then a query for one key; the target is its value."""

    def make(rng: random.Random) -> Example:
        keys = rng.sample(_WORDS, rng.randint(*records))
        vals = [rng.randint(10, 99) for _ in keys]
        q = rng.randrange(len(keys))
        return Example(render(list(zip(keys, vals)), keys[q]), f" {vals[q]}", str(vals[q]))

    return make


def _r_records(kv, q):
    return f"Records: {'; '.join(f'{k}={v}' for k, v in kv)}. What is the value of {q}?"


def _r_colon(kv, q):
    return f"Inventory: {', '.join(f'{k}: {v}' for k, v in kv)}. What number is listed for {q}?"


def _r_sentences(kv, q):
    return " ".join(f"The {k} is number {v}." for k, v in kv) + f" Which number is the {q}?"


def _r_query_first(kv, q):
    return f"What is the value of {q}? Records: {'; '.join(f'{k}={v}' for k, v in kv)}."


def _r_json(kv, q):
    return f"Data: {json.dumps(dict(kv))}. What value is stored under \"{q}\"?"


def _r_lockers(kv, q):
    return f"Locker assignments: {', '.join(f'{k} -> {v}' for k, v in kv)}. Which locker does {q} have?"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _r_prices(kv, q):
    return f"Price list: {', '.join(f'{_a(k)} costs {v} coins' for k, v in kv)}. How many coins does {_a(q)} cost?"


def _r_table(kv, q):
    return f"Table rows: {' | '.join(f'{k} {v}' for k, v in kv)} | Look up the number for {q}."


# --- instruction -----------------------------------------------------------------------------------------

_SEPS = [(",", "commas", "comma"), (";", "semicolons", "semicolon"), ("-", "dashes", "dash")]
_REPEAT_SEPS = [(" ", "spaces", "space"), (",", "commas", "comma")]


@dataclass(frozen=True)
class Phrasing:
    """One family's wording of the four instruction kinds (placeholders filled by `_instruction_family`)."""

    upper: str  # {words}
    count: str  # {a} {b} {seps} {sep}
    repeat: str  # {w} {k} {seps} {sep}
    reverse: str  # {w1} {w2} {w3}


def _instruction_family(ph: Phrasing) -> Callable[[random.Random], Example]:
    """Short instructions whose output is checkable exactly: uppercase words in brackets, a counted range
    with a separator, a repeated word, three words reversed."""

    def make(rng: random.Random) -> Example:
        kind = rng.randrange(4)
        if kind == 0:
            ws = rng.sample(_WORDS, rng.randint(1, 2))
            out, prompt = "[" + " ".join(w.upper() for w in ws) + "]", ph.upper.format(words=" and ".join(ws))
        elif kind == 1:
            a = rng.randint(1, 60)
            b = a + rng.randint(2, 5)
            sep, seps, one = rng.choice(_SEPS)
            out, prompt = sep.join(str(i) for i in range(a, b + 1)), ph.count.format(a=a, b=b, seps=seps, sep=one)
        elif kind == 2:
            w, k = rng.choice(_WORDS), rng.randint(2, 4)
            sep, seps, one = rng.choice(_REPEAT_SEPS)
            out, prompt = sep.join([w] * k), ph.repeat.format(w=w, k=k, seps=seps, sep=one)
        else:
            ws = rng.sample(_WORDS, 3)
            out, prompt = ",".join(reversed(ws)), ph.reverse.format(w1=ws[0], w2=ws[1], w3=ws[2])
        return Example(prompt, " " + out, out)

    return make


_IMPERATIVE = Phrasing(
    "Write {words} in uppercase inside square brackets.", "List the numbers from {a} to {b}, separated by {seps}.",
    "Repeat the word {w} {k} times, separated by {seps}.", "Write {w1}, {w2}, {w3} in reverse order, separated by commas.")
_POLITE = Phrasing(
    "Please write {words} in capital letters inside square brackets.",
    "Please list the whole numbers from {a} through {b}, with {seps} between them.",
    "Please write the word {w} {k} times with {seps} between the copies.",
    "Please write {w1}, {w2}, {w3} backwards in order, last one first, with commas between them.")
_TERSE = Phrasing(
    "Uppercase, in square brackets: {words}.", "Numbers {a} to {b}, {sep}-separated.",
    "The word {w}, {k} times, {sep}-separated.", "Reverse the order of {w1}, {w2}, {w3}; comma-separated.")
_QUESTION = Phrasing(
    "Can you write {words} in uppercase between square brackets?",
    "Could you count from {a} to {b}, putting {seps} between the numbers?",
    "Can you say {w} {k} times, using {seps} in between?",
    "Can you give {w1}, {w2}, {w3} in reverse order, separated by commas?")
_SPEC = Phrasing(
    "Output {words} in uppercase, wrapped in square brackets.", "Output every integer from {a} to {b} inclusive, joined by {seps}.",
    "Output the word {w} repeated {k} times, joined by {seps}.", "Output {w1}, {w2}, {w3} from last to first, joined by commas.")
_TASK = Phrasing(
    "Task: convert {words} to upper case and wrap the result in square brackets.",
    "Task: count from {a} up to {b} and separate the numbers with {seps}.",
    "Task: repeat {w} {k} times, separating the copies with {seps}.",
    "Task: reverse the list {w1}, {w2}, {w3} and separate the items with commas.")
_REQUEST = Phrasing(
    "I need {words} in capitals, enclosed in square brackets.", "I need the numbers {a} to {b}, separated by {seps}.",
    "I need the word {w} written {k} times, separated by {seps}.",
    "I need {w1}, {w2}, {w3} in the opposite order, separated by commas.")


# --- checkers ----------------------------------------------------------------------------------------------

def check_arithmetic(completion: str, ex: Example) -> bool:
    m = re.search(r"Answer:\s*(-?\d+)", first_line(completion))
    return bool(m) and m.group(1) == ex.answer


def check_first_int(completion: str, ex: Example) -> bool:
    m = re.search(r"-?\d+", first_line(completion))
    return bool(m) and m.group(0) == ex.answer


def _check_exact(completion: str, ex: Example) -> bool:
    return first_line(completion) == ex.answer


# --- tasks -------------------------------------------------------------------------------------------------

def _families(kind: Callable, table: list[tuple[str, str, object]]) -> tuple[Family, ...]:
    return tuple(Family(name, split, kind(render)) for name, split, render in table)


# (family, split, renderer): public so that other generators (the loop's difficulty-graded ones) reuse the
# wordings and splits without changing these tasks' examples
ARITHMETIC_RENDERERS = [
    ("items", "train", _a_items), ("shop", "train", _a_shop), ("question_first", "train", _a_question_first),
    ("log", "train", _a_log), ("game", "validation", _a_game), ("tank", "validation", _a_tank),
    ("bank", "test", _a_bank), ("bus", "test", _a_bus),
]
RECALL_RENDERERS = [
    ("records", "train", _r_records), ("colon", "train", _r_colon), ("sentences", "train", _r_sentences),
    ("query_first", "train", _r_query_first), ("json", "validation", _r_json), ("lockers", "validation", _r_lockers),
    ("prices", "test", _r_prices), ("table", "test", _r_table),
]

BUILTIN = {
    "arithmetic": Task("arithmetic", _families(arithmetic_family, ARITHMETIC_RENDERERS), check_arithmetic),
    "recall": Task("recall", _families(recall_family, RECALL_RENDERERS), check_first_int),
    "instruction": Task("instruction", _families(_instruction_family, [
        ("imperative", "train", _IMPERATIVE), ("polite", "train", _POLITE), ("terse", "train", _TERSE),
        ("question", "validation", _QUESTION), ("spec", "validation", _SPEC),
        ("task", "test", _TASK), ("request", "test", _REQUEST),
    ]), _check_exact),
}


def get_task(name: str, data: dict[str, str] | None = None) -> Task:
    """The built-in (or opt-in) task, or the user's JSONL rows for it (checked by exact match of the first line,
    except tasks whose checker reads `Answer:`)."""
    if name in OPT_IN:
        base = OPT_IN[name]
    elif name in BUILTIN:
        base = BUILTIN[name]
    else:
        raise ValueError(f"unknown task {name!r}; allowed: {list(BUILTIN) + list(OPT_IN_TASKS)}")
    if data and name in data:
        return Task(name, (), base.check if name in ("arithmetic", "driving") else _check_exact, jsonl=data[name])
    return base


def few_shot_prompt(ex: Example, shots: list[Example]) -> str:
    """`Q: ...\\nA: ...` blocks; the model completes the last `A:` on one line."""
    blocks = [f"Q: {s.prompt}\nA:{s.target}\n\n" for s in shots]
    return "".join(blocks) + f"Q: {ex.prompt}\nA:"


def with_shots(task: Task, split: str, n: int, shots: int, seed: int) -> list[tuple[str, Example]]:
    """(prompt, example) pairs; in-context examples always come from the train split (train families)."""
    items = task.examples(split, n, seed)
    pool = task.examples("train", max(64, shots * 8), seed + 1) if shots else []
    rng = random.Random(f"shots:{task.name}:{split}:{seed}")
    return [(few_shot_prompt(ex, rng.sample(pool, shots) if shots else []), ex) for ex in items]
