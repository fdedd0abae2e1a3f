"""Settings of the loop stage (issue 15; `../shared/design/next-stages.md` §2). Defaults are the CPU `quick`
profile: ten short phases on a 2-core machine; `full` lengthens every phase and the validation.

A phase is one `PhaseSettings`: its kind (train / calibrate / dream / reflect) and the mechanisms it switches on
(Grokfast, the difficulty curriculum, gradient noise, the self-model head, Polyak averaging, distillation).
Each mechanism's constants live once at the loop level (`grokfast`, `curriculum`, `noise`, `dream`,
`self_model`, `distill`); a phase only says whether it uses them, so two phases can never disagree about α.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..settings_base import RuntimeSection, Section, StageSection
from ..training.distill import DistillSettings
from ..training.focuses import check_focuses

PHASE_KINDS = ("train", "calibrate", "dream", "reflect")


class PhaseSettings(Section):
    name: str
    kind: Literal["train", "calibrate", "dream", "reflect"] = "train"
    steps: int = Field(3, ge=0, description="Optimizer steps (calibrate: none, it only measures; full: 60).")
    lr_scale: float = Field(1.0, gt=0, description="× loop.lr (float) or loop.lr_bitnet (ternary latents).")
    grokfast: bool = Field(False, description="EMA gradient filter (loop.grokfast) before clipping.")
    curriculum: bool = Field(False, description="Train on the difficulty-graded generators at the controller's level.")
    noise: Literal["off", "controlled", "anneal"] = Field(
        "off", description="controlled: annealed gradient noise whose η a controller holds at the stability band; "
        "anneal: η from the last controlled value linearly to 0.")
    noise_multiplier: float = Field(1.0, gt=0, description="× σ (a deliberately bad phase for the gate's test).")
    self_model: bool = Field(False, description="Self-model and confidence heads (loop.self_model) in the loss.")
    polyak: bool = Field(False, description="Polyak average of the weights; keep the better of it and the last.")
    distill: bool = Field(True, description="KL to the float teacher (ternary input only; loop.distill).")


def default_phases() -> list[PhaseSettings]:
    """The issue's 10 phases: 1-3 base adaptation, 4-6 chaos injection, 7-8 dreaming, 9-10 self-modelling and
    stabilisation."""
    P = PhaseSettings
    return [
        P(name="adapt"),
        P(name="grokfast", grokfast=True),
        P(name="calibrate", kind="calibrate", steps=0),
        P(name="curriculum", curriculum=True),
        P(name="perturb", curriculum=True, noise="controlled"),
        P(name="anneal", curriculum=True, noise="anneal", grokfast=True),
        P(name="dream", kind="dream"),
        P(name="reflect", kind="reflect"),
        P(name="self_model", self_model=True),
        P(name="stabilize", lr_scale=0.1, polyak=True),
    ]


class GrokfastSettings(Section):
    alpha: float = Field(0.98, ge=0, lt=1, description="EMA decay (the reference's default).")
    lamb: float = Field(2.0, ge=0, description="Amplification of the slow component (the reference's default).")


class CurriculumSettings(Section):
    tasks: list[str] = Field(default_factory=lambda: ["arithmetic", "recall"], min_length=1,
                             description="Graded generators (`graded.py`).")
    target: float = Field(0.85, gt=0, lt=1, description="Training accuracy to hold (Wilson et al. 2019).")
    band: tuple[float, float] = Field((0.75, 0.95), description="Accuracy band counted as 'at the edge'.")
    kappa: float = Field(2.0, gt=0, description="Controller gain: d ← d + κ(â − a*) (the design note has 0.5, with which "
                         "one level takes eight windows 0.25 off target: more than the quick profile's 12 updates allow).")
    every: int = Field(2, ge=1, description="Steps per controller update.")
    calibration_examples: int = Field(8, gt=0, description="Examples per level in the calibration pass.")

    @field_validator("tasks")
    @classmethod
    def _graded(cls, v: list[str]) -> list[str]:
        from .graded import GRADED

        bad = [t for t in v if t not in GRADED]
        if bad:
            raise ValueError(f"no graded generator for {bad}; allowed: {list(GRADED)}")
        return v


class NoiseSettings(Section):
    eta: float = Field(1e-4, gt=0, description="Initial η of σ_t² = η/(1+t)^γ (the controller moves it).")
    gamma: float = Field(0.55, ge=0, description="Neelakantan et al. 2015.")
    flip_band: tuple[float, float] = Field((1e-5, 1e-4), description="Ternary input: code flips per weight per step.")
    lyapunov_band: tuple[float, float] = Field((-0.05, 0.05), description="Float input: depth-Lyapunov proxy λ_d.")
    factor: float = Field(2.0, gt=1, description="η ×/÷ this when the signal leaves its band.")


class DreamSettings(Section):
    tasks: list[str] = Field(default_factory=lambda: ["arithmetic", "recall", "instruction"], min_length=1)
    prompts: int = Field(8, gt=0, description="Train prompts per task sampled from.")
    temperature: float = Field(0.8, gt=0)
    max_new_tokens: int = Field(40, gt=0)
    replay_ratio: float = Field(1.0, ge=0, description="Real train examples per kept dream.")


class SelfModelSettings(Section):
    weight: float = Field(0.1, ge=0, description="Weight of L_self (0: the head is off, bit-identical to none).")
    confidence_weight: float = Field(1.0, ge=0)
    layer: int | None = Field(None, description="Hidden state predicted (default: the middle layer).")
    lr: float = Field(1e-3, gt=0, description="The heads' own learning rate.")


class LoopRuntime(RuntimeSection):
    keep_state: bool = Field(False, description="Keep the exact training state in the work dir after the output is "
                             "published (to inspect it; it is about 4× the model's size).")
    publish_phases: Literal["auto", "always", "never"] = Field(
        "auto", description="Publish the model after each phase (but the last, which the output follows at once) "
        "as the store checkpoint `<key>-p<k>`, so that another machine can resume the loop. auto: when the store "
        "is remote or on another filesystem than the work dir; on the work dir's own disk the exact state kept "
        "there already holds the same weights, and the copy would cost about the model's size per phase.")


class LoopSettings(StageSection):
    profiles = {"full": {"batch_size": 8, "max_len": 256, "val_examples": 32, "val_ppl_tokens": 4096,
                         "phases": [{**p.identity(), "steps": 0 if p.kind == "calibrate" else 60}
                                    for p in default_phases()]}}

    enabled: bool = True

    phases: list[PhaseSettings] = Field(default_factory=default_phases, min_length=1)
    lr: float = Field(2e-5, gt=0, description="Peak lr for a float input (full fine-tuning).")
    lr_bitnet: float = Field(2e-4, gt=0, description="Peak lr for ternary latents (the BitNet stage's QAT lr).")
    warmup: int = Field(1, ge=0, description="Warm-up steps at the start of each phase (then cosine).")
    batch_size: int = Field(4, gt=0)
    max_len: int = Field(128, gt=16)
    data: list[str] = Field(default_factory=lambda: ["language", "reasoning", "memory", "instruction"], min_length=1,
                            description="The mixed train splits (focuses) of every phase without a curriculum.")
    grokfast: GrokfastSettings = Field(default_factory=GrokfastSettings)
    curriculum: CurriculumSettings = Field(default_factory=CurriculumSettings)
    noise: NoiseSettings = Field(default_factory=NoiseSettings)
    dream: DreamSettings = Field(default_factory=DreamSettings)
    self_model: SelfModelSettings = Field(default_factory=SelfModelSettings)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    val_examples: int = Field(4, gt=0, description="Validation examples per task after every phase.")
    val_ppl_tokens: int = Field(512, gt=0, description="Validation perplexity tokens after every phase.")
    tolerance: float = Field(0.05, ge=0, description="A phase that lowers the combined validation score by more "
                             "than this against the best phase kept so far is rolled back.")
    gate_z: float = Field(2.0, ge=0, description="The gate counts the accuracy part of a drop only beyond this many "
                          "standard errors of the difference (loop/gate.py); 0: the plain score drop.")
    score: dict[str, float] = Field(default_factory=dict, description="Weights of the combined score; empty: "
                                    "EvoMerge's fitness (restricted to the evaluated metrics).")
    seed: int = 0
    runtime: LoopRuntime = Field(default_factory=LoopRuntime)
    gates: dict[str, float] = Field(default_factory=lambda: {"perplexity": 0.1, "perplexity_ood": 0.1,
                                                             "arithmetic": 0.1, "recall": 0.1, "instruction": 0.1})

    @field_validator("data")
    @classmethod
    def _focuses(cls, v: list[str]) -> list[str]:
        return check_focuses(v)

    @model_validator(mode="after")
    def _phases(self) -> "LoopSettings":
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"loop.phases: names must be distinct, got {names}")
        for p in self.phases:
            if p.kind == "calibrate" and p.steps:
                raise ValueError(f"loop.phases[{p.name}]: a calibrate phase only measures; set its steps to 0")
            if p.kind != "calibrate" and p.steps == 0:
                raise ValueError(f"loop.phases[{p.name}]: a {p.kind} phase needs steps > 0 (or remove the phase)")
            if p.noise == "anneal" and not any(q.noise == "controlled" for q in self.phases[:names.index(p.name)]):
                raise ValueError(f"loop.phases[{p.name}]: noise=anneal needs an earlier phase with noise=controlled "
                                 "(it anneals the η that phase reached)")
        return self
