"""Settings of the EvoMerge stage: the search space, CMA-ES budget, fitness; where candidates run is its
runtime part (`evomerge.runtime`), never part of the key."""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ..evals.suite import PERPLEXITY_TEXTS
from ..evals.tasks import TASK_NAMES
from ..settings_base import FanoutRuntime, Section, StageSection
from .genome import SEARCHABLE


class CandidateEvalSettings(Section):
    """The eval budget of each EvoMerge candidate (validation split); the winner gets the full suite."""

    n_examples: int = Field(16, gt=0, description="Examples per task for a candidate's fitness.")
    ppl_tokens: int = Field(2048, gt=0, description="Held-out (validation) tokens for a candidate's perplexity.")


class EvoMergeSettings(StageSection):
    profiles = {"full": {"population": 12, "generations": 10, "finalists": 3, "candidate_eval": {"n_examples": 100, "ppl_tokens": 16384}}}

    enabled: bool = True
    methods: list[str] = Field(
        default_factory=lambda: ["task_arithmetic", "ties", "dare_ties", "linear"], min_length=1,
        description="Merge methods the search may choose (one gene each; the largest wins).",
    )
    bands: int = Field(1, ge=1, le=8, description="Layer bands: per-model weights/densities may differ per band (a mergekit gradient).")
    weight_bounds: tuple[float, float] = Field((0.0, 1.2), description="Range of each model's weight.")
    density_bounds: tuple[float, float] = Field((0.2, 1.0), description="Range of TIES/DARE densities.")
    lambda_bounds: tuple[float, float] = Field((0.6, 1.6), description="Range of the task-vector scale lambda.")
    population: int = Field(3, ge=2, description="Candidates per CMA-ES generation.")
    generations: int = Field(2, ge=1)
    sigma: float = Field(0.25, gt=0, le=1, description="Initial CMA-ES step size in the unit cube of genes.")
    seed_inputs: bool = Field(True, description="Generation 0 also scores each input model alone (a linear recipe of "
                              "one model), so the search measures the merges against their parts and CMA-ES learns from them.")
    finalists: int = Field(1, ge=1, description="The best candidates re-scored on the validation split with the "
                           "stage's full eval (`eval.n_examples` per task); the best re-score wins (1: no re-scoring).")
    seed: int = 0
    fitness: dict[str, float] = Field(
        default_factory=lambda: {"arithmetic": 1.0, "recall": 1.0, "instruction": 1.0, "perplexity": 0.5,
                                 "perplexity_ood": 0.5, "arithmetic_nll": 0.25, "recall_nll": 0.25,
                                 "instruction_nll": 0.25},
        description="Combined score = sum of weight * term; term = accuracy, -ln(perplexity) or -NLL.",
    )
    candidate_eval: CandidateEvalSettings = Field(default_factory=CandidateEvalSettings)
    gates: dict[str, float] = Field(default_factory=lambda: {"perplexity": 0.5, "perplexity_ood": 0.5})
    runtime: FanoutRuntime = Field(default_factory=FanoutRuntime, description="Where candidates run (not part of the key).")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in SEARCHABLE]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"methods must be distinct names from {list(SEARCHABLE)} (searchable over N models), got {v}")
        return v

    @field_validator("weight_bounds", "density_bounds", "lambda_bounds")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"bounds must be (low, high) with low < high, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _fitness_metrics(self) -> "EvoMergeSettings":
        known = set(TASK_NAMES) | {f"{t}_nll" for t in TASK_NAMES} | set(PERPLEXITY_TEXTS)
        bad = [m for m in self.fitness if m not in known]
        if bad or not self.fitness:
            raise ValueError(f"fitness names unknown metrics {bad}; allowed: {sorted(known)}")
        return self
