"""Settings of the eval suite run on every stage's output (part of every checkpoint key)."""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ..settings_base import Section
from .tasks import OPT_IN_TASKS, TASK_NAMES


class EvalSettings(Section):
    profiles = {"full": {"n_examples": 200, "max_new_tokens": 48, "shots": 2, "ppl_tokens": 32768, "ppl_window": 1024, "batch_size": 32}}

    tasks: list[str] = Field(default_factory=lambda: list(TASK_NAMES))
    n_examples: int = Field(24, gt=0, description="Examples per task on the scored split (24: an accuracy's "
                            "standard error is at most ±0.1; every stage's output is scored, so this sets much of the "
                            "quick chain's time: 28 s for the default model on 2 cores, bench/results/eval_speed.json; "
                            "full: 200).")
    shots: int = Field(1, ge=0, description="In-context examples (from the train split) in each prompt.")
    ppl_tokens: int = Field(2048, gt=0, description="Tokens of held-out text for perplexity, per text (in-domain and "
                            "out-of-domain). The quick chain scores nine checkpoints: 2048 (8 windows) rather than 4096 "
                            "keeps it within its 45 minutes; the same text for every checkpoint, so gates compare alike.")
    ppl_window: int = Field(256, gt=8)
    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(32, gt=0, description="Greedy tokens per answer (the longest gold answer, two "
                                "worked arithmetic steps, is about 20).")
    seed: int = 1234
    noise_aware_gates: bool = Field(
        True, description="An accuracy gate fails only when its shortfall below the allowed minimum is beyond the "
        "noise (2 standard errors of the difference, `evals/gates.py`); false: the point estimates decide.")
    data: dict[str, str] = Field(
        default_factory=dict, description="Bring your own data: task name -> JSONL file with prompt/answer rows."
    )
    thoughts: bool = Field(
        False, description="Also evaluate checkpoints that carry Quiet-STaR state in thought mode (think before "
        "every token); recorded beside the plain-mode metrics, which gates and keys use.")

    def identity(self) -> dict:
        out = super().identity()
        if not self.thoughts:  # off is the behaviour from before the option: keys written then stay valid
            out.pop("thoughts")
        return out

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in TASK_NAMES + OPT_IN_TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; allowed: {list(TASK_NAMES + OPT_IN_TASKS)}")
        return v

    @model_validator(mode="after")
    def _window_fits(self) -> "EvalSettings":
        if self.ppl_tokens < self.ppl_window:
            raise ValueError(f"ppl_tokens ({self.ppl_tokens}) must be at least ppl_window ({self.ppl_window}): "
                             "perplexity is scored in whole windows")
        return self
