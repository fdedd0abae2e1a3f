"""Settings of the BitNet b1.58 stage."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..architecture import PROJECTIONS
from ..settings_base import StageSection, known
from ..training.distill import DistillSettings
from ..training.focuses import check_focuses
from .convert import SCHEDULES
from .embeddings16 import DTYPES
from .packing import FORMATS


DEFAULT_SHARE = {"language": 3.0}


class BitnetSettings(StageSection):
    profiles = {"full": {"enabled": True, "steps": 1000, "warmup": 300, "batch_size": 16, "max_len": 512}}
    off_note = ("At the quick budget the ternary SmolLM2-135M reaches test perplexity 111 against float 18.6 (x6.0; "
                "bench/results/bitnet_levers.json, lever channel_float_ends_bf16_language3), which would leave every "
                "later stage a model with little to train on")

    modules: list[str] = Field(
        default_factory=lambda: list(PROJECTIONS),
        min_length=1, description="Linear layers to ternarize (name suffixes); lm_head and embeddings stay float.",
    )
    float_layers: list[int] = Field(
        default_factory=lambda: [0, -1], description="Decoder layers (indices, negative from the end) whose "
        "projections stay float32 ([]: every layer ternary, as b1.58). Measured at the quick budget "
        "(bench/results/bitnet_levers.json, channel_float_ends): test perplexity 165 vs 406 with every layer "
        "ternary, at 9.64 bits/weight over the whole model vs 8.04 (the two layers' 7.1M weights at 32 bits "
        "instead of 1.65).")
    act_bits: int = Field(8, ge=2, le=8)
    norm: bool = Field(False, description="RMSNorm before activation quantization (the b1.58 SubLN).")
    scales: Literal["tensor", "channel"] = Field(
        "channel", description="Weight scale gamma (absmean) per tensor (b1.58), or per output channel: 32 bits per "
        "row more, +0.056 bits/weight on a 576-wide row, +0.021 on 1536 (bitnet/ternary.py). Measured at the quick "
        "budget (bench/results/bitnet_levers.json): test perplexity 406 per channel vs 651 per tensor.")
    packing: str = Field("base3", description="base3: 1.6 bits/weight; 2bit: faster unpacking.")
    embeddings: str = Field("float32", description="Stored dtype of the (tied) embeddings and output head: float32, "
                            "or bfloat16, which packed inference also multiplies the head in (bitnet/embeddings16.py).")
    schedule: str = Field("linear", description="lambda warm-up schedule: linear, exponential, sigmoid or none.")
    warmup: int = Field(30, ge=0, description="Steps over which quantization is ramped in (lambda 0 -> 1).")
    steps: int = Field(60, gt=0, description="QAT steps (0 would be post-training ternarization).")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate. With distillation at the quick budget "
                      "(bench/results/bitnet_levers.json): test perplexity 5,108 at 2e-4, 1,380 at 1e-3, 651 at 3e-3.")
    lr_warmup: int = Field(5, ge=0)
    train_precision: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="QAT steps' forward (the student's and the teacher's) under bfloat16 autocast; the "
        "latent weights, the optimiser, the token curve and the packed model stay float32. Measured on 2 cores: a step "
        "14.3 s vs 22.7 s in float32 (with `train_attention` eager; bench/results/bitnet_qat_speed.json), and at the "
        "same training tokens the same validation perplexity (47 vs 46 at 77k tokens, 36 vs 36.5 at 89k; "
        "bench/results/bitnet_levers.json, channel_30min_float_ends_bf16 vs channel_30min_float_ends).")
    train_attention: Literal["eager", "sdpa"] = Field(
        "eager", description="transformers' attention kernel in the QAT steps (training/attention.py): eager 14.3 s a "
        "step, sdpa 14.6 s in the same run (within noise here; on baking's steps eager was 1.24x); on a GPU, sdpa.")
    batch_size: int = Field(8, gt=0)
    max_len: int = Field(256, gt=16)
    data: list[str] = Field(
        default_factory=lambda: ["language", "reasoning", "memory", "instruction"], min_length=1,
        description="Training mixture for QAT: focuses (training/focuses.py), the same generators as Cognate, train split.",
    )
    data_share: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SHARE), description="Relative weight of each focus in `data` (one not "
        "named weighs 1; empty: an equal split of the QAT sequences). Default {language: 3}: half the sequences "
        "natural-text windows, half the three tasks. Measured with float ends and bfloat16 steps "
        "(bench/results/bitnet_levers.json): test perplexity 64.0 vs 104.6 for the equal split at the 30-minute "
        "budget (recall 10/72 vs 14/72, arithmetic 6 vs 5, instruction 1 vs 4), 111 vs 165 at the quick budget "
        "(recall 1/72 vs 4/72); with every layer ternary it had cost recall (2/72 vs 8/72).")
    distill: DistillSettings = Field(
        default_factory=DistillSettings,
        description="Knowledge distillation from the float input during QAT (training/distill.py); kl_weight 0: "
        "plain cross-entropy, no teacher loaded. On by default: x0.68 the test perplexity of plain QAT at the quick "
        "budget (bench/results/bitnet_levers.json).")
    curve_every: int = Field(0, ge=0, description="Every this many QAT steps (and after the last) the ternary model's "
                             "(lambda 1) validation perplexity on curve_tokens tokens: info.curve, the token curve; 0: off.")
    curve_tokens: int = Field(2048, gt=0)
    measure_ptq: bool = Field(True, description="Also evaluate plain post-training ternarization (no training).")
    seed: int = 0
    gates: dict[str, float] = Field(default_factory=lambda: {"perplexity": 20.0, "perplexity_ood": 20.0})

    @field_validator("packing")
    @classmethod
    def _packing(cls, v: str) -> str:
        return known(v, FORMATS, "packing")

    @field_validator("embeddings")
    @classmethod
    def _embeddings(cls, v: str) -> str:
        return known(v, DTYPES, "embeddings dtype")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        return known(v, SCHEDULES, "schedule")

    @field_validator("data")
    @classmethod
    def _focuses(cls, v: list[str]) -> list[str]:
        return check_focuses(v)

    @model_validator(mode="before")
    @classmethod
    def _default_share_follows_data(cls, values):
        """The default share weighs only the focuses `data` names (`data=[reasoning]` alone is no error); a share
        given explicitly must name focuses in `data` (below)."""
        if isinstance(values, dict) and "data_share" not in values and "data" in values:
            values = {**values, "data_share": {k: v for k, v in DEFAULT_SHARE.items() if k in values["data"]}}
        return values

    @model_validator(mode="after")
    def _shares_name_data(self) -> "BitnetSettings":
        bad = {k: v for k, v in self.data_share.items() if k not in self.data or v <= 0}
        if bad:
            raise ValueError(f"bitnet.data_share {bad}: each key must be a focus in bitnet.data {self.data} with a "
                             "positive weight")
        return self

    @model_validator(mode="after")
    def _warmup_fits(self) -> "BitnetSettings":
        if self.warmup > self.steps:
            raise ValueError(
                f"warmup ({self.warmup}) must not exceed steps ({self.steps}): quantization would never reach "
                "full strength during training"
            )
        return self
