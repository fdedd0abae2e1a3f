"""Module names of the Llama-family decoders the project forges (SmolLM2, Llama, Mistral, Qwen2).

`PROJECTIONS` are the attention and MLP linears: what LoRA trains and BitNet ternarizes by default
(embeddings and `lm_head` are left out on purpose). Settings name modules by suffix.
"""
from __future__ import annotations

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def matches_suffix(name: str, suffixes) -> bool:
    """`model.layers.0.self_attn.q_proj` matches `q_proj` (a whole dotted component, not `xq_proj`)."""
    return any(name == s or name.endswith("." + s) for s in suffixes)
