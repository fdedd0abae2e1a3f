"""ADAS-style search over agent designs (after Hu et al. 2024, "Automated Design of Agentic Systems").

A 135M model cannot be ADAS's meta agent writing agent code, so this is the honest version over a fixed space
of building blocks (`designs.Design`): an archive seeded with hand-made designs, grown by mutating one gene of a
design drawn from the archive's best (tournament of `tournament`), every design scored on the **validation**
split (bootstrap median and 95% interval, as ADAS). Continuous mixes α come from a CMA-ES distribution kept
across the search (`cma`; one ask per `mix` mutation, told when a population is scored).
Selection reads validation scores only (`select`); the top `test_top` designs are then scored once on the
test split and reported (the ADAS archives show test-picked winners overstate: its DROP headline 79.4 F1 came
from a design ranked 4th on validation, whose top design scored 70.7 on test).
"""
from __future__ import annotations

import random
from typing import Callable

from .designs import PATTERNS, Design

# (designs, split) -> a bootstrap dict ("median", "mean", "lo", "hi") per design, scored in parallel where the
# caller can (`job.py`: the stage's fan-out)
Scorer = Callable[[list[Design], str], list[dict]]


def seeds(modes: list[str], n_experts: int) -> list[Design]:
    """The hand-designed starting points: the base as it is, routed experts, the base with its calculator."""
    out = [Design("none")]
    out += [Design(m) for m in modes[:1]]
    out += [Design("none", tools=True), Design("static", mix=tuple([1.0 / n_experts] * n_experts))]
    return out


class MixES:
    """CMA-ES over α ∈ [0, 1]^K for the `mix` gene."""

    def __init__(self, k: int, seed: int, popsize: int = 4):
        import cma

        self.es = cma.CMAEvolutionStrategy([1.0 / k] * k, 0.3, {"bounds": [0, 1], "seed": seed + 1, "popsize": popsize,
                                                                "verbose": -9})
        self.pending: list = []
        self.asked: list = []
        self.scored: dict[tuple, float] = {}

    def ask(self) -> tuple[float, ...]:
        if not self.pending:
            self.asked = self.es.ask()
            self.pending = list(self.asked)
        return tuple(round(float(a), 4) for a in self.pending.pop())

    def tell(self, alpha: tuple[float, ...], score: float) -> None:
        self.scored[alpha] = score
        keys = [tuple(round(float(a), 4) for a in x) for x in self.asked]
        if self.asked and all(k in self.scored for k in keys):
            self.es.tell(self.asked, [-self.scored[k] for k in keys])  # cma minimises
            self.asked = []


def mutate(d: Design, rng: random.Random, modes: list[str], n_experts: int, thoughts: bool, es: MixES) -> Design:
    """One gene changed."""
    genes = ["dispatch", "pattern", "tools", "retrieval"] + (["thoughts"] if thoughts else []) + \
        (["mix"] if d.dispatch == "static" else [])
    gene = rng.choice(genes)
    if gene == "dispatch":
        choice = rng.choice([m for m in ["none", "static", *modes] if m != d.dispatch])
        return d.with_gene(dispatch=choice, mix=es.ask() if choice == "static" else None)
    if gene == "mix":
        return d.with_gene(mix=es.ask())
    if gene == "pattern":
        if d.pattern == "direct":
            return d.with_gene(pattern="self_consistency", k=rng.choice([3, 5]))
        return d.with_gene(pattern=rng.choice([p for p in PATTERNS if p != "self_consistency"]))
    return d.with_gene(**{gene: not getattr(d, gene)})


def select(archive: list[dict]) -> list[dict]:
    """The archive ranked by validation (median, then mean); test scores are never read here."""
    return sorted(archive, key=lambda r: (r["validation"]["median"], r["validation"]["mean"]), reverse=True)


def run_search(score: Scorer, modes: list[str], n_experts: int, thoughts: bool, designs: int, test_top: int,
               seed: int = 0, tournament: int = 3, batch: int = 1, log: Callable[[str], None] = lambda m: None) -> dict:
    """The archive search; `batch` children are bred from the archive as it is, then scored together."""
    rng = random.Random(seed)
    es = MixES(n_experts, seed)
    archive: list[dict] = []
    seen: set[Design] = set()

    def add(ds: list[tuple[Design, str]]) -> None:
        for (d, origin), val in zip(ds, score([d for d, _ in ds], "validation")):
            archive.append({"design": d.as_dict(), "label": d.label(), "origin": origin,
                            "validation": {k: v for k, v in val.items() if k != "correct"}})
            if d.dispatch == "static":
                es.tell(d.mix, val["median"])
            log(f"design {len(archive)}/{designs}: {d.label()} validation {val['median']:.3f} "
                f"[{val['lo']:.3f}, {val['hi']:.3f}]")

    start = seeds(modes, n_experts)[:designs]
    seen.update(start)
    add([(d, "seed") for d in start])
    while len(archive) < designs:
        children: list[tuple[Design, str]] = []
        for _ in range(min(batch, designs - len(archive))):
            parent = rng.choice(select(archive)[:tournament])
            for _ in range(50):
                child = mutate(Design.from_dict(parent["design"]), rng, modes, n_experts, thoughts, es)
                if child.valid() and child not in seen:
                    seen.add(child)
                    children.append((child, f"mutant of {parent['label']}"))
                    break
        if not children:
            break  # the space around the best is exhausted
        add(children)
    ranked = select(archive)
    top = ranked[:test_top]
    for r, test in zip(top, score([Design.from_dict(r["design"]) for r in top], "test")):
        r["test"] = {k: v for k, v in test.items() if k != "correct"}
        log(f"test: {r['label']} {r['test']['mean']:.3f} (validation rank {ranked.index(r) + 1})")
    return {"archive": archive, "chosen": ranked[0], "ranked": [r["label"] for r in ranked]}
