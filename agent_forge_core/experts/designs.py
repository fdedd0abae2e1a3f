"""Agent designs built from the pipeline's parts, and their measured score (the ADAS-style search's genome).

A design says how the forged model answers: which expert per prompt (`dispatch`: none, a static mix α, or one
of the dispatchers), the answer pattern (direct greedy, or self-consistency: k answers sampled at temperature
T, the most frequent final answer wins, Wang et al. 2023), the calculator and documentation search in the tool
loop, and Quiet-STaR thought mode (where the checkpoint carries its state; it has no tool loop, so thoughts
exclude tools). `DesignEvaluator.correctness` answers every task's prompts of a split with the design and
returns one 0/1 per prompt; `bootstrap` turns that into the ADAS fitness: the median of bootstrap means with
a 95% interval (ShengranHu/ADAS `bootstrap_confidence_interval`).
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..evals.tasks import first_line, get_task, with_shots
from .svf import SVF
from .two_pass import TwoPass

PATTERNS = ("direct", "self_consistency")


@dataclass(frozen=True)
class Design:
    dispatch: str = "none"  # none | static | linear | prompt | cls_expert | cem
    mix: tuple[float, ...] | None = None  # α of `static`
    pattern: str = "direct"
    k: int = 3
    temperature: float = 0.7
    tools: bool = False
    retrieval: bool = False
    thoughts: bool = False

    def valid(self) -> bool:
        return (self.dispatch != "static" or self.mix is not None) and not (self.thoughts and (self.tools or self.retrieval
                                                                                                or self.pattern != "direct"))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mix"] = list(self.mix) if self.mix is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Design":
        return cls(**{**d, "mix": tuple(d["mix"]) if d.get("mix") is not None else None})

    def label(self) -> str:
        parts = [self.dispatch if self.dispatch != "static" else "mix(" + ",".join(f"{a:.2f}" for a in self.mix) + ")",
                 self.pattern if self.pattern == "direct" else f"sc{self.k}@{self.temperature:g}"]
        parts += [name for name, on in (("tools", self.tools), ("rag", self.retrieval), ("thoughts", self.thoughts)) if on]
        return "+".join(parts)

    def with_gene(self, **kw) -> "Design":
        return replace(self, **kw)


def answer_key(completion: str) -> str:
    """What self-consistency votes on: the final answer (`Answer: X`), else the first line."""
    line = first_line(completion)
    m = re.search(r"Answer:\s*(.+?)\s*\.?$", line)
    return (m.group(1) if m else line).strip().lower()


def vote(candidates: list[str]) -> str:
    """The first candidate whose final answer is the most frequent (ties: the earliest sampled)."""
    counts = Counter(answer_key(c) for c in candidates)
    best = max(counts.values())
    return next(c for c in candidates if counts[answer_key(c)] == best)


def bootstrap(xs: list[float], iters: int = 1000, seed: int = 0) -> dict[str, float]:
    """Median of `iters` bootstrap means and the 2.5/97.5 percentiles."""
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(sum(xs[rng.randrange(n)] for _ in range(n)) / n for _ in range(iters))
    return {"median": means[iters // 2], "lo": means[int(0.025 * iters)], "hi": means[int(0.975 * iters) - 1],
            "mean": sum(xs) / n, "n": n}


class DesignEvaluator:
    """Scores designs on one checkpoint (its experts, dispatchers and Quiet-STaR state where present)."""

    def __init__(self, model, tok, folder: str | Path, eval_cfg, agent_settings, tasks: list[str], n: int,
                 svf: SVF | None = None):
        from ..quietstar.state import has_thoughts

        self.model, self.tok, self.folder = model, tok, Path(folder)
        self.ev, self.agent, self.tasks, self.n = eval_cfg, agent_settings, tasks, n
        self.svf = svf if svf is not None else SVF(model, TwoPass.target_of(folder))
        self.has_thoughts = has_thoughts(folder)
        self._thought_state = None

    def _runtime(self, design: Design):
        from ..agent.runtime import Runtime
        from ..agent.settings import RuntimeSpec

        tools = (["calc"] if design.tools else []) + (["search"] if design.retrieval else [])
        spec = RuntimeSpec(tools=tools, instructions=bool(tools))
        rt = Runtime.open(None, self.model, self.tok, self.agent, session="design-search", spec=spec)
        rt.two_pass = TwoPass(self.model, self.tok, self.folder, design.dispatch, design.mix, self.svf)
        if rt.memory:
            rt.memory.clear()
        return rt

    def _thought_complete(self, rt, task: str):
        from ..quietstar.generate import thought_completer
        from ..quietstar.state import ThoughtState

        if self._thought_state is None:
            self._thought_state = ThoughtState.load(self.folder, self.model)
        state, meta = self._thought_state
        inner = thought_completer(self.model, state, meta["n_thought"], self.ev.max_new_tokens, self.ev.batch_size)

        def complete(model, tok, prompts):
            out = [""] * len(prompts)
            for choice, ix in rt.two_pass.groups(rt.two_pass.choose(prompts, task)).items():
                with rt.two_pass.applied(choice):
                    for i, c in zip(ix, inner(model, tok, [prompts[i] for i in ix])):
                        out[i] = c
            return out

        return complete

    def correctness(self, design: Design, split: str) -> list[int]:
        if not design.valid() or (design.thoughts and not self.has_thoughts):
            raise ValueError(f"design {design.label()} is not valid for this checkpoint")
        rt = self._runtime(design)
        out: list[int] = []
        for name in self.tasks:
            task = get_task(name, self.ev.data)
            items = with_shots(task, split, self.n, self.ev.shots, self.ev.seed)
            prompts = [p for p, _ in items]
            if design.thoughts:
                answers = self._thought_complete(rt, name)(self.model, self.tok, prompts)
            elif design.pattern == "direct":
                answers = rt.completer(self.ev.max_new_tokens, self.ev.batch_size, task=name)(self.model, self.tok, prompts)
            else:
                samples = [rt.completer(self.ev.max_new_tokens, self.ev.batch_size, design.temperature, seed, name)(
                    self.model, self.tok, prompts) for seed in range(design.k)]
                answers = [vote(list(c)) for c in zip(*samples)]
            out += [int(task.check(a, ex)) for a, (_, ex) in zip(answers, items)]
        return out

    def score(self, design: Design, split: str, seed: int = 0) -> dict:
        xs = self.correctness(design, split)
        return {**bootstrap([float(x) for x in xs], seed=seed), "correct": xs}
