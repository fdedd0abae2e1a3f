"""`driving`: an opt-in task of verifiable driving-rules questions (the seed's "driver assistance" gloss).

Three kinds, each with an exact answer and, where there is arithmetic, worked steps in the arithmetic
task's `a op b = c.` form so the same step verifier applies:
- stopping distance: speed v ∈ {36, 54, 72, 90} km/h (10, 15, 20, 25 m/s), reaction time t ∈ {1, 2} s,
  deceleration a ∈ {5, 10} m/s²: reaction distance v·t, braking distance v²/(2a), total D (multiples of
  0.25 m, written exactly); the answer is D rounded half up to whole metres (`Answer: D`).
- right of way at a four-way stop: up to four cars with arrival order; the first to arrive goes; on a tie,
  the car on the right of the other goes first (the car to a car's right yields nobody; `Answer: <name>`).
- adjusted speed limit in rain: the posted limit minus 20%; is a given speed within it? `Answer: yes|no`.

Opt-in: not in `TASK_NAMES`, so the default `eval.tasks`, the tiny test tokenizer's corpus and every cached
key stay as they were; `eval.tasks: [..., driving]` turns it on. Families are split like the built-in tasks.
"""
from __future__ import annotations

import math
import random
import re

from .task_types import Example, Family, Task, first_line

_SPEEDS = {36: 10, 54: 15, 72: 20, 90: 25}
_CARS = ["red car", "blue car", "green car", "white car"]
_SIDES = ["north", "east", "south", "west"]  # clockwise: the car on the right of one from `north` is from `west`


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")  # exact: every value here is a multiple of 0.25


def _stopping(rng: random.Random, render) -> Example:
    kmh = rng.choice(list(_SPEEDS))
    v, t, a = _SPEEDS[kmh], rng.choice([1, 2]), rng.choice([5, 10])
    d1, d2 = v * t, v * v / (2 * a)
    total = d1 + d2
    answer = str(math.floor(total + 0.5))
    steps = f" {v} * {t} = {d1}. {v} * {v} / {2 * a} = {_num(d2)}. {d1} + {_num(d2)} = {_num(total)}."
    return Example(render(kmh, t, a), steps + f" Answer: {answer}", answer)


def _right_of_way(rng: random.Random, render) -> Example:
    """Two cars arriving at once from adjacent sides, or cars arriving one after another."""
    if rng.random() < 0.5:
        i = rng.randrange(4)
        a_side, b_side = _SIDES[i], _SIDES[(i - 1) % 4]  # b is on a's right
        a, b = rng.sample(_CARS, 2)
        facts = [f"the {a} comes from the {a_side}", f"the {b} comes from the {b_side}"]
        rng.shuffle(facts)
        return Example(render(facts, tie=True), f" Both arrive together; the {b} is on the right of the {a}. "
                       f"Answer: {b}", b)
    cars = rng.sample(_CARS, rng.randint(2, 3))
    order = ["first", "second", "third"]
    facts = [f"the {c} arrives {order[k]}" for k, c in enumerate(cars)]
    rng.shuffle(facts)
    return Example(render(facts, tie=False), f" The {cars[0]} arrived first. Answer: {cars[0]}", cars[0])


def _rain(rng: random.Random, render) -> Example:
    limit = rng.choice([50, 60, 80, 100, 120])
    adjusted = limit * 4 // 5
    speed = adjusted + rng.choice([-15, -10, -5, 0, 5, 10, 15])
    ok = "yes" if speed <= adjusted else "no"
    steps = f" {limit} * 20 / 100 = {limit // 5}. {limit} - {limit // 5} = {adjusted}. {speed} {'<=' if ok == 'yes' else '>'} {adjusted}."
    return Example(render(limit, speed), steps + f" Answer: {ok}", ok)


def _family(stopping, right_of_way, rain):
    def make(rng: random.Random) -> Example:
        kind = rng.randrange(3)
        if kind == 0:
            return _stopping(rng, stopping)
        if kind == 1:
            return _right_of_way(rng, right_of_way)
        return _rain(rng, rain)

    return make


def _row(tie_q: str, seq_q: str):
    def render(facts, tie):
        return (tie_q if tie else seq_q).format(facts="; ".join(facts))

    return render


_FAMILIES = (
    ("plain", "train", _family(
        lambda kmh, t, a: f"A car drives at {kmh} km/h. The driver reacts in {t} s and the brakes decelerate at {a} m/s^2. "
        "What is the stopping distance in meters?",
        _row("At a four-way stop, {facts}, and both arrive at the same time. Which car goes first?",
             "At a four-way stop, {facts}. Which car goes first?"),
        lambda limit, speed: f"The speed limit is {limit} km/h and it is raining, so the limit drops by 20%. "
        f"Is driving at {speed} km/h allowed?")),
    ("exam", "train", _family(
        lambda kmh, t, a: f"Driving test: speed {kmh} km/h, reaction time {t} s, braking deceleration {a} m/s^2. "
        "Total stopping distance in meters?",
        _row("Driving test: four-way stop; {facts}; they arrive simultaneously. Who has the right of way?",
             "Driving test: four-way stop; {facts}. Who has the right of way?"),
        lambda limit, speed: f"Driving test: posted limit {limit} km/h, wet road (limit reduced by 20%). "
        f"Is {speed} km/h within the limit?")),
    ("instructor", "train", _family(
        lambda kmh, t, a: f"My instructor asks: at {kmh} km/h with {t} s to react and {a} m/s^2 of braking, "
        "how many meters do I need to stop?",
        _row("My instructor asks: {facts}, all at the same moment at a four-way stop. Who should go first?",
             "My instructor asks: at a four-way stop, {facts}. Who should go first?"),
        lambda limit, speed: f"My instructor asks: the sign says {limit} km/h but it rains, so 20% less applies. "
        f"May I drive {speed} km/h?")),
    ("report", "validation", _family(
        lambda kmh, t, a: f"Incident report: vehicle speed {kmh} km/h; driver reaction {t} s; deceleration {a} m/s^2. "
        "Compute the stopping distance (m).",
        _row("Incident report: at an all-way stop {facts}, arriving together. Which vehicle had priority?",
             "Incident report: at an all-way stop {facts}. Which vehicle had priority?"),
        lambda limit, speed: f"Incident report: limit {limit} km/h, rain (20% reduction). Recorded speed {speed} km/h. "
        "Was it within the limit?")),
    ("quiz", "validation", _family(
        lambda kmh, t, a: f"Quiz: {t} s reaction, {a} m/s^2 braking, {kmh} km/h. Stopping distance in meters?",
        _row("Quiz: four-way stop, {facts}, same arrival time. First to go?",
             "Quiz: four-way stop, {facts}. First to go?"),
        lambda limit, speed: f"Quiz: rain cuts the {limit} km/h limit by 20%. {speed} km/h: allowed?")),
    ("manual", "test", _family(
        lambda kmh, t, a: f"From the driver's manual: a vehicle at {kmh} km/h, a reaction time of {t} s, and a "
        f"deceleration of {a} m/s^2. How far does it travel before stopping, in meters?",
        _row("From the driver's manual: four vehicles may meet at a four-way stop. Here {facts}, simultaneously. "
             "Which one proceeds first?",
             "From the driver's manual: at a four-way stop {facts}. Which one proceeds first?"),
        lambda limit, speed: f"From the driver's manual: in rain the {limit} km/h limit is lowered by 20%. "
        f"Is a speed of {speed} km/h legal?")),
    ("dashcam", "test", _family(
        lambda kmh, t, a: f"Dashcam log: {kmh} km/h, reaction {t} s, brakes {a} m/s^2. Meters until standstill?",
        _row("Dashcam log: four-way stop, {facts}, both at once. Who goes first?",
             "Dashcam log: four-way stop, {facts}. Who goes first?"),
        lambda limit, speed: f"Dashcam log: rain, sign {limit} km/h, 20% reduction applies, speed {speed} km/h. Legal?")),
)


def _check(completion: str, ex: Example) -> bool:
    m = re.search(r"Answer:\s*(.+?)\s*\.?$", first_line(completion))
    return bool(m) and m.group(1).strip().lower().removeprefix("the ") == ex.answer.lower()


DRIVING = Task("driving", tuple(Family(n, s, make) for n, s, make in _FAMILIES), _check)
