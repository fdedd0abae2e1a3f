"""Settings of the baking stage (Prompt Baking, Bhargava et al. 2024). Defaults are the CPU `quick` profile.

Reference (amanb2000/prompt_weight_equivalence, `train_loop.py`, `generate_data.py`): LoRA r=32 with
lora_alpha=1 on q, k, v, o (an effective scale alpha/r = 1/32), Adam lr 1e-4, trajectories sampled from the
prompted model at temperature 2.0. We keep the reference's effective scale (alpha = r/32) at a smaller rank
and raise the learning rate so that tens of CPU steps move the model; `info.departures` records each
difference in the manifest.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from ..settings_base import Section, StageSection

BAKES = ("tool", "memory", "retrieval", "persona")

REFERENCE = {"lora_r": 32, "lora_alpha": 1.0, "lr": 1e-4, "temperature": 2.0, "teacher_temperature": 1.0}


class PersonaSettings(Section):
    name: str = Field("Forge", min_length=1, max_length=40, description="What the agent calls itself.")
    role: str = Field("the assistant built by the Agent Forge pipeline", max_length=200)
    style: str = Field("brief and exact", max_length=200)
    expand_tokens: int = Field(40, ge=0, le=200, description="Tokens the model writes to expand the seed into "
                               "its own persona prompt (self-guided); 0: the seed sentence alone.")
    train_turns: list[Annotated[int, Field(ge=0, le=16)]] = Field(
        default_factory=lambda: [0, 0, 1, 2, 4], min_length=1,
        description="Earlier Q/A turns on other tasks (train split) before each identity training question, drawn "
        "from this list per question; [0] bakes single-turn answers only (measured: then the baked persona is "
        "gone after 2 turns).")
    pursuit_rounds: int = Field(0, ge=0, le=4, description="Prompt Pursuit: re-prompt the baked model with its "
                                "persona prompt and bake again, this many more times.")


class StepFactors(Section):
    """Each bake's optimiser steps as a multiple of `baking.steps`. Measured in the quick profile (16 probes):
    persona after the tool, memory and retrieval bakes at 1x identity 0.00 (held-out KL still falling), 24 more
    steps gave 1.00. Memory baked alone on the base model: at 1x read rate 0.00 (prompted 1.00; the student opened
    a read on recall questions with probability 0.05, the prompted teacher 0.31), at 2x 1.00 (0.23), recall 0 at
    both. In the quick chain memory reads reach 1.00 at 1x, and 2x there (with the experimental memory prompt noted
    in `prompts.py`) left the model calling memory on every identity question and the persona unbaked (identity
    0.12 vs 0.56 at 1x; bench/results/baking_quick_memwrites*.json). Since trajectories keep the generator's ids and
    memory is baked late (`BakingSettings.order`): memory at 2x, recall 0.31-0.38 at the end of the chain vs 0.00 at
    1x (bench/results/baking_quick_memory_last*.json). Tool at 1x on the quick chain's loop output (four
    demonstrations): call rate prompted 0.62, baked 0.00 (16 probes); at 2x 0.75 (`anchor` 0.5) and 0.25 (`anchor` 1.0)."""
    tool: float = Field(2.0, gt=0, le=8)
    memory: float = Field(2.0, gt=0, le=8)
    retrieval: float = Field(1.0, gt=0, le=8)
    persona: float = Field(2.0, gt=0, le=8)


class ChatShares(Section):
    """Per tool bake, the share of its other queries that are plain identity questions, where no call belongs (the
    persona bake has none: its own queries are identity questions). The tool bake gets none: its prompted teacher
    calls the calculator on 0.56 of identity questions, so their trajectories would teach false calls. Memory gets
    only identity questions (its teacher answers them without calls); measured when memory was baked last, after the
    persona: at the end of the quick chain persona 5/8 vs 4/8 with 1/3 (within noise) and tool calls 4/8 vs 3/8,
    while the memory probe's false calls stay high (0.75 vs 0.88). One section, so
    `--set baking.chat_share.memory=0.5` keeps the others."""
    tool: float = Field(0.0, ge=0, le=1)
    memory: float = Field(1.0, ge=0, le=1)
    retrieval: float = Field(1 / 3, ge=0, le=1)


class BakingSettings(StageSection):
    profiles = {"full": {"trajectories": 128, "steps": 60, "batch_size": 8, "probe_examples": 128,
                         "forgetting_examples": 64,
                         "forgetting_turns": [0, 2, 4, 8], "curve_every": 4}}

    enabled: bool = True

    order: list[str] = Field(
        default_factory=lambda: ["tool", "retrieval", "memory", "persona"], min_length=1,
        description=f"Sub-bakes in order, each merged before the next: any of {list(BAKES)}. Memory late: baked "
        "second, its recall was 0 by the end of the quick chain (the later bakes overwrite it, replay did not hold "
        "it); third or last at 2x steps with identity questions for all its other queries it holds. Persona last: "
        "baked before memory, the quick chain's persona was 0/8 at baking's output and 1/8 on the final agent (the "
        "memory bake overwrote it), and memory reads were lost at compression (1/8 on the final agent); persona last, "
        "on the same loop output through experts and compression (text-calibrated), the final agent named the "
        "persona 7/8, read memory 7/8 with recall 4/8, and called tools as often (calculator 4/8, search 4/8; "
        "bench/results/baking_quick_persona_last_chain.json).")
    trajectories: int = Field(24, gt=0, description="Trajectories sampled from the prompted model per bake "
                              "(one query each, train splits only).")
    other_share: float = Field(0.25, ge=0, lt=1, description="Share of each bake's queries from other tasks (the "
                               "eval suite's prompts), where the prompted teacher does not use the bake's tool.")
    chat_share: ChatShares = Field(default_factory=ChatShares,
                                   description="Per tool bake, the share of its other queries that are plain "
                                   "identity questions (`ChatShares`).")
    temperature: float = Field(0.5, gt=0, le=5, description="Sampling temperature of the trajectories (reference "
                               "2.0 for 7B models; a 135M model writes mostly noise at 1.0 and above).")
    teacher_temperature: float = Field(1.0, gt=0, le=5, description="Temperature of the prompted teacher's "
                                       "targets, softmax(logits / T): 1 is the reference's KL; below 1 sharpens the "
                                       "targets toward the teacher's likeliest token (what greedy decoding follows); "
                                       "0.5 did not bake memory recall (measured before trajectories kept the "
                                       "generator's ids: recall 0, read back 0.31 vs 0.38 at 1).")
    max_new_tokens: int = Field(40, gt=0, description="Model tokens per trajectory (executor results not counted).")
    objective: Literal["kl", "sft"] = Field("kl", description="kl: Prompt Baking. sft: the control, cross-entropy "
                                            "on the sampled tokens (a plain fine-tune on the same trajectories).")
    lora_r: int = Field(8, gt=0)
    lora_alpha: float = Field(0.25, gt=0, description="alpha/r = 1/32, the reference's effective scale.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    lr: float = Field(5e-3, gt=0, description="Adam learning rate (reference 1e-4 over many epochs; measured on the "
                      "default model: 2e-3 leaves greedy behaviour unbaked in 24 steps, 1e-2 costs +67% perplexity).")
    steps: int = Field(18, gt=0, description="Optimiser steps per bake (× `step_factor`; the quick chain's four bakes "
                       "took 13 minutes at 24).")
    batch_size: int = Field(8, gt=0)
    step_factor: StepFactors = Field(default_factory=StepFactors,
                                     description="Per bake, its optimiser steps as a multiple of `steps`.")
    train_precision: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="The student's forward and backward in training (torch.autocast; the trained "
        "weights, the optimiser, the teacher and the held-out curve stay float32). The KLs baked are nats per "
        "answer, far above bfloat16's rounding. On 2 CPU cores with bfloat16 dot products a 576x1536 matmul ran 3.5x "
        "faster and a step of 8 tool trajectories 1.6x (6.6 s vs 10-11 s, both measured under the same load).")
    train_attention: Literal["eager", "sdpa"] = Field(
        "eager", description="transformers' attention kernel in training steps (`training/attention.py`); decoding, "
        "the teacher and the held-out curve keep the model's own. On 2 CPU cores 6 retrieval steps took 12.5 s eager, "
        "15.5 s with sdpa, whose flash-attention backward is slow there (bench/results/baking_speed.json); on a GPU, "
        "sdpa.")
    decode_precision: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="Decoding (the trajectories sampled and the probes' greedy answers) under "
        "torch.autocast; the teacher's log-probabilities, the losses and the held-out curve stay float32. Measured on "
        "the default model, 2 cores: 28 tool trajectories sampled in 14.4 s vs 21.4 s in float32 (bench/baking_speed.py).")
    replay: float = Field(0.5, ge=0, le=4, description="Earlier bakes' training trajectories replayed in each "
                          "later bake (with the targets of the teacher that made them), as a share of the bake's "
                          "own count, split evenly among the earlier bakes; 0: none (measured then: the tool call "
                          "rate fell from 0.77 to 0.00 by the end of the four bakes).")
    anchor: float = Field(1.0, ge=0, le=4, description="The input model's own answers (unprompted, with its own "
                          "targets) to train prompts of the tasks no bake teaches (recall, instruction), replayed in "
                          "every bake, as a share of a bake's trajectory count; 0: none. Measured on the quick chain's "
                          "loop output (the suite's 24 test recall prompts; 0.71 before baking): without it and with two "
                          "tool demonstrations at 1x, recall after the four bakes 0.21 (held-out phrasings answered with "
                          "arithmetic steps, '48 * 48 = 2160'); four demonstrations, tool at 2x: 0.42 at 0.5 (tool calls "
                          "0.75), 0.67 at 1.0 (tool calls 0.25, memory recall 0.75, persona 1.00; after each bake 0.67, "
                          "0.54, 0.62, 0.67).")
    heldout: int = Field(4, ge=0, description="Extra trajectories kept out of training: the KL on them is the "
                         "half-baking curve's held-out line.")
    curve_every: int = Field(8, gt=0, description="Steps between held-out KL measurements (each a float32 forward "
                             "of the held-out trajectories; their time is `heldout_s` in the history).")
    probe_examples: int = Field(8, gt=0, description="Test-split examples per probe and condition (the benchmark "
                                "uses >=128).")
    forgetting_examples: int = Field(4, gt=0, description="Examples for the forgetting measurements: earlier "
                                     "bakes re-measured after each bake, and the persona probe after k > 0 turns.")
    forgetting_turns: list[int] = Field(default_factory=lambda: [0, 4], min_length=1, description="Distractor "
                                        "turns before the persona probe (prompt forgetting); the benchmark uses 0, 2, 4, 8.")
    persona: PersonaSettings = Field(default_factory=PersonaSettings)
    ternary_input: Literal["ste", "refuse"] = Field(
        "ste", description="A BitNet input: ste trains the latent weights under the straight-through estimator "
        "and writes BitNet again; refuse stops with a message (LoRA merged into ternary weights mostly rounds away).")
    ste_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the latent weights (ste): a code flips "
                          "when its latent moves by about half the layer scale, so this is higher than LoRA needs.")
    seed: int = 0
    # Baking trades text perplexity for behaviour (measured on the default model's pydoc text: +27% after the
    # tool and persona bakes, +47% after all four): the perplexity gates allow +50%, the accuracies -0.1.
    gates: dict[str, float] = Field(default_factory=lambda: {
        "perplexity": 0.5, "perplexity_ood": 0.5, "arithmetic": 0.1, "recall": 0.1, "instruction": 0.1})

    @field_validator("order")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [b for b in v if b not in BAKES]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"baking.order {v}: each of {list(BAKES)} at most once (unknown or repeated: "
                             f"{bad or [b for b in v if v.count(b) > 1]})")
        return v
