"""Settings of the expert-vectors stage (Transformer² SVF experts and their dispatch). Defaults are the CPU
`quick` profile; `full` takes the reference's optimiser and CEM settings.

Reference (SakanaAI/self-adaptive-llms): SVF on the MLP matrices, p initialised 0.1 + 0.01·N(0,1), Adam lr 2e-3,
batch 256, 200-2000 iterations, gradient-norm clip 1e-3, KL coefficient 0, greedy samples; CEM population 32,
elite ratio 0.2, 50 generations, 10 shots, ties broken by log-likelihood. `info.departures` records ours.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..settings_base import FanoutRuntime, Section, StageSection
from .domains import DOMAIN_NAMES

REFERENCE = {"target": "mlp", "init": 0.1, "lr": 2e-3, "batch_size": 256, "max_grad_norm": 1e-3, "kl_coeff": 0.0}
CEM_REFERENCE = {"population": 32, "elite_ratio": 0.2, "generations": 50, "shots": 10}


class ExpertTraining(Section):
    """How each expert is trained (`experts.train`)."""

    profiles = {"full": {"lr": 2e-3, "steps": 200, "batch_size": 64, "max_new_tokens": 48}}

    target: Literal["mlp", "all"] = Field("mlp", description="mlp: gate, up, down (the reference; 51,840 values per "
                                          "expert on SmolLM2-135M); all: also q, k, v, o (97,920).")
    objective: Literal["auto", "reinforce", "nll"] = Field(
        "auto", description="reinforce: the reference's (±1 rewards from the task checker on greedy answers); nll: "
        "teacher-forced gold targets (not the reference's); auto: reinforce where the base answers at least "
        "`min_reward_share` of a train batch, else nll. Text domains always train on nll.")
    min_reward_share: float = Field(0.1, ge=0, le=1)
    init: float = Field(0.1, description="p's initial value (z = sigmoid(p) ≈ 0.525).")
    lr: float = Field(2e-2, gt=0, description="Adam lr on p (reference 2e-3 over 200+ iterations; tens of CPU steps "
                      "at 2e-3 move z by < 0.01).")
    steps: int = Field(4, gt=0, description="Optimiser steps per expert (each one a forward and backward of "
                       "`batch_size` prompts; ~11 s on 2 cores for SmolLM2-135M).")
    batch_size: int = Field(8, gt=0)
    max_grad_norm: float = Field(1e-3, gt=0, description="Clip of p's gradient norm (the reference's 1e-3; Adam is "
                                 "invariant to the scale, so this only caps outliers relative to its moments).")
    kl_coeff: float = Field(0.0, ge=0, description="λ_KL: KL to the base model's distribution (reference 0).")
    max_new_tokens: int = Field(32, gt=0, description="Greedy tokens per answer for the rewards (an answer cut "
                                "there earns what the checker says of it).")
    text_chars: int = Field(400, gt=0, description="Characters per natural-text window (language domain).")


class CEMSettings(Section):
    """Few-shot adaptation: α of z' = Σ α_k z_k searched with the cross-entropy method."""

    profiles = {"full": {"population": 32, "generations": 50, "shots": 10}}

    population: int = Field(8, ge=2)
    elite_ratio: float = Field(0.25, gt=0, le=1, description="Reference 0.2 (of 32: 6 elites); 0.25 of 8 keeps 2.")
    generations: int = Field(4, gt=0)
    shots: int = Field(10, gt=0, description="Labelled examples of the target task the search sees (train split).")
    init_std: float = Field(0.5, gt=0, description="Initial std of α (the reference: half the range [0, 1]).")


class SearchSettings(Section):
    """The ADAS-style search over agent designs (`search.py`)."""

    enabled: bool = Field(False, description="Search agent designs after the experts are trained (each design is a "
                          "validation run: minutes per design on CPU; `full` turns it on).")
    designs: int = Field(8, ge=1, description="Designs scored on validation, the hand-made seeds included.")
    examples: int = Field(16, gt=0, description="Validation (and test) examples per task for each design.")
    test_top: int = Field(3, ge=1, description="The best designs on validation, each scored once on test.")
    tournament: int = Field(3, ge=1, description="Parents are drawn from this many best designs.")


class ExpertsSettings(StageSection):
    profiles = {"full": {"matrix_examples": 128, "dispatch_train": 48, "dispatch_examples": 64,
                         "dispatch_compare": ["prompt", "linear"],
                         "search": {"enabled": True, "designs": 20, "examples": 64}}}

    enabled: bool = True

    domains: list[str] = Field(default_factory=lambda: ["arithmetic", "recall", "instruction", "language"],
                               min_length=1, description=f"One expert each, any of {list(DOMAIN_NAMES)} "
                               "(driving also needs no eval change: the stage measures it itself).")
    train: ExpertTraining = Field(default_factory=ExpertTraining)
    cem: CEMSettings = Field(default_factory=CEMSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    dispatch: Literal["prompt", "cls_expert", "linear", "cem"] = Field(
        "linear", description="How the two-pass runtime picks z' per prompt: prompt (the model names the domain), "
        "cls_expert (an SVF expert trained to name it), linear (logistic regression on the base's pooled hidden "
        "states; not in the paper), cem (one α per task, searched few-shot; needs the task known).")
    cls_objective: Literal["nll", "reinforce"] = Field(
        "nll", description="How the classification expert (dispatch cls_expert) learns: nll, the cross-entropy of "
        "the gold label (the router picks the likeliest label, which is what this trains); reinforce, the "
        "reference's (on SmolLM2-135M, 16 steps at lr 2e-2: nll 0.93 dispatch accuracy, reinforce 0.23, collapsed "
        "onto one label; bench/results/experts_dispatch.json).")
    dispatch_compare: list[Literal["prompt", "linear"]] = Field(
        default_factory=list, description="Dispatchers measured beside `dispatch` (dispatch accuracy only; `full`: "
        "both).")
    other_margin: float = Field(1.1, ge=0, description="The linear dispatcher leaves a query on the base weights "
                                "when it lies farther than this times the farthest training query from its domain's "
                                "centroid (`dispatch.py`); 0: never.")
    dispatch_train: int = Field(16, gt=0, description="Train-split queries per domain for the dispatchers that learn.")
    dispatch_examples: int = Field(8, gt=0, description="Test-split queries per domain for dispatch accuracy.")
    matrix_examples: int = Field(0, ge=0, description="Test-split examples per task for the expert x task matrix "
                                 "(every expert on every domain; `full` 128, as the benchmark). 0: no matrix (the "
                                 "quick profile: its rows cost a third of an evaluation each; the runner's evaluation "
                                 "still measures the routed model against its input).")
    ternary_input: Literal["compose", "refuse"] = Field(
        "compose", description="A BitNet input: compose experts on the dequantized weights (the output's composed "
        "weights are float), or refuse.")
    seed: int = 0
    runtime: FanoutRuntime = Field(default_factory=FanoutRuntime, description="Where the search's design "
                                   "evaluations run (as EvoMerge's candidates).")
    gates: dict[str, float] = Field(default_factory=lambda: {
        "perplexity": 0.05, "perplexity_ood": 0.05, "arithmetic": 0.05, "recall": 0.05, "instruction": 0.05})

    @field_validator("domains")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in DOMAIN_NAMES]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"experts.domains {v}: each of {list(DOMAIN_NAMES)} at most once")
        return v
