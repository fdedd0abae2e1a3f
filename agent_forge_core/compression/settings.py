"""Settings of the final compression stage: the plan (rules), `auto`'s candidates and budget."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..evals.tasks import TASK_NAMES
from ..settings_base import Section, StageSection, known
from .codecs import CODECS, get_codec

PLAN_CHOICES = ("auto", "keep")
# 4.5 bits between VPTQ's ~3 and RTN's 6.5: the bench's GGUF Q4_0 row kept recall at 5.3 bpw model-wide where
# VPTQ lost it, so the search needs a step there.
QUICK_CANDIDATES = [{"codec": "gptq", "params": {"bits": 4, "group": 64, "symmetric": False}},
                    {"codec": "rtn", "params": {"bits": 6, "group": 64}},
                    {"codec": "rtn", "params": {"bits": 8, "group": 64}}]
FULL_CANDIDATES = [{"codec": "vptq", "params": {"v": 4, "k": 256}},
                   {"codec": "vptq", "params": {"v": 4, "k": 256, "residual_k": 16}},
                   {"codec": "hyper", "params": {"n": 256, "spacing": "geometric"}},
                   *QUICK_CANDIDATES]  # besides a codec: choose per tensor, or store the tensor as it is


class FinetuneSettings(Section):
    """End-to-end distillation after quantization (`finetune.py`): codebooks and norms, codes fixed."""

    enabled: bool = Field(False, description="Tune the codecs' trainable values (VPTQ codebooks) and the norms "
                          "(quick: off, it pays for VPTQ's codebooks, which quick does not try; full: on).")
    steps: int = Field(32, ge=0, description="Adam steps (cosine learning rate to 0); ~17 s each for a 135M model "
                       "on 2 CPU cores.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate. On SmolLM2-135M at VPTQ ~3 bpw, 32 steps: "
                      "1e-4 gave test perplexity x1.40 (KL 0.238 -> 0.187), 5e-4 x1.35 (-> 0.159), 2e-3 x1.34 "
                      "(-> 0.222, the calibration KL worse).")
    batch: int = Field(4, gt=0, description="Sequences of calibration_len tokens per step.")
    tokens: int = Field(16384, gt=0, description="Held-in calibration text the steps draw from.")


class CompressionRule(Section):
    pattern: str = Field(description="fnmatch glob over tensor names, e.g. '*.mlp.*_proj.weight'; the first match wins.")
    codec: str = Field(description="A codec (seedlm, vptq, hyper, rtn, gptq, gguf), `auto` or `keep`.")
    params: dict[str, Any] = Field(default_factory=dict, description="The codec's parameters (see its docstring).")

    @field_validator("codec")
    @classmethod
    def _known(cls, v: str) -> str:
        return known(v, [*sorted(CODECS), *PLAN_CHOICES], "codec")


class AutoCandidate(Section):
    codec: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("codec")
    @classmethod
    def _known(cls, v: str) -> str:
        return known(v, sorted(CODECS), "codec")


class CompressionSettings(StageSection):
    # quick: a fixed target over three fast codecs (the whole chain must fit 45 minutes on 2 cores); full: the
    # search over every codec for the smallest plan whose gates pass, with fine-tuning.
    profiles = {"full": {"auto_candidates": FULL_CANDIDATES, "target_bpw": "auto", "finetune": {"enabled": True}}}

    enabled: bool = True
    rules: list[CompressionRule] = Field(
        default_factory=lambda: [
            CompressionRule(pattern="*_proj.weight", codec="auto"),
            CompressionRule(pattern="*embed_tokens.weight", codec="rtn", params={"bits": 8, "group": 64}),
            CompressionRule(pattern="*", codec="keep"),
        ],
        min_length=1, description="Tensor-name pattern -> codec (first match); tensors that match none are kept.",
    )
    auto_candidates: list[AutoCandidate] = Field(
        default_factory=lambda: [AutoCandidate(**c) for c in QUICK_CANDIDATES],
        min_length=1, description="What `auto` tries on each tensor (each one encodes it: cost adds up). quick: "
        "asymmetric GPTQ 4-bit, RTN 6-bit and 8-bit (about a minute for SmolLM2-135M); full: also VPTQ ~2 and ~3 bpw and "
        "Hyper-Compression (about 20 minutes of encoding on 2 CPU cores).",
    )
    error_budget: float = Field(0.05, gt=0, description="auto: largest relative (Hessian-weighted) error a tensor may get.")
    target_bpw: float | Literal["auto"] | None = Field(
        8.0, description="Model-wide bits per weight (all tensors counted) the `auto` tensors' plan meets; "
        "`auto`: the smallest whose gates pass on the validation split (`target_search.py`); null: the most "
        "accurate plan within error_budget. quick: 8.0 (each search probe is a validation run); full: auto. Measured "
        "on the quick chain's experts checkpoint: its routed instruction expert's target NLL 0.91 became 1.26 at 6.0 "
        "bpw and 1.15 at 6.57 (every projection RTN 6-bit), beyond the gate's +25%; bare (no expert) 1.87 -> 1.98 "
        "at 6.0: the SVF experts' effect is what 6 bits lose.")
    search_tolerance: float = Field(0.1, gt=0, description="target_bpw auto: stop when the smallest passing and "
                                    "the largest failing plan are this close (bits per weight).")
    search_probes: int = Field(6, ge=2, description="target_bpw auto: most plans evaluated (each a validation run).")
    finetune: FinetuneSettings = Field(default_factory=lambda: FinetuneSettings())
    keep_dtype: Literal["float16", "float32"] = Field("float16", description="How kept tensors (norms...) are stored.")
    calibration_tokens: int = Field(4096, ge=0, description="Held-in text tokens for the Hessians (0: no Hessian).")
    calibration_len: int = Field(256, gt=8)
    calibration_traffic: int = Field(
        8, ge=0, description="Per capability a stage on the input's lineage gave the agent (`StageSpec.traffic`: "
        "baking's tool, memory, retrieval and persona), the agent's own answers to this many train-split queries, "
        "runtime in the loop, are calibrated on beside the text (0: text only; ~2,500 tokens beside 4,096 of text, "
        "15-32 s). At 8.0 bpw, 32 probes per metric (bench/agent_calibration.py): on a quick chain whose memory was "
        "baked last the final agent's memory recall was 0.75 uncompressed, 0.125 calibrated on text alone and 0.72 "
        "with the traffic (reads 0.91 / 0.22 / 0.84); on the default chain (persona last) text alone kept it too "
        "(recall 0.59 / 0.59 / 0.62) and the rest moved within noise in both.")
    seed: int = 0
    # The last stage must keep what the others built: the task accuracies (absolute) and their NLLs, not only
    # perplexity (a 4.5 bpw plan kept perplexity x1.53 while recall fell 0.53 -> 0.03).
    gates: dict[str, float] = Field(default_factory=lambda: {
        "perplexity": 0.25, "perplexity_ood": 0.25, **{t: 0.05 for t in TASK_NAMES},
        **{f"{t}_nll": 0.25 for t in TASK_NAMES}})

    @model_validator(mode="after")
    def _auto_needs_gates(self) -> "CompressionSettings":
        if self.target_bpw == "auto" and not self.gates:
            raise ValueError("compression.target_bpw: auto searches the smallest plan whose gates pass, and "
                             "compression.gates is empty; set gates, or a number for target_bpw")
        return self

    @model_validator(mode="after")
    def _codec_params(self) -> "CompressionSettings":
        for r in [*self.rules, *self.auto_candidates]:
            if r.codec not in PLAN_CHOICES:
                get_codec(r.codec, **r.params)  # unknown or invalid parameters fail here, before any work
        return self
