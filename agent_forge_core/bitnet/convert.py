"""Converting a HF causal LM to BitNet b1.58 and ramping quantization in.

`convert` swaps the chosen nn.Linear modules for BitLinear (same weights, so lam = 0 is the original
model); embeddings and `lm_head` stay in higher precision unless listed, and so do the projections of the
decoder layers named in `float_layers` (the stage keeps the first and last: bench/results/bitnet_levers.json,
lever channel_float_ends). The warm-up coefficient lam follows a schedule over `warmup` steps (the schedules
of the HF "Fine-tuning LLMs to 1.58bit" study):
    linear:      lam = min(step / warmup, 1)
    exponential: lam = min(1, (1 - exp(-k * step / warmup)) / (1 - exp(-k))),  k = 5
    sigmoid:     lam = 1 / (1 + exp(-k * (step / warmup - 0.5))) rescaled to [0, 1],  k = 10
    none:        lam = 1 from the first step (quantize immediately)
"""
from __future__ import annotations

import math
import re

from torch import nn

from ..architecture import PROJECTIONS, matches_suffix
from .bitlinear import BitLinear

SCHEDULES = ("linear", "exponential", "sigmoid", "none")
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def lambda_at(step: int, warmup: int, schedule: str = "linear") -> float:
    if schedule == "none" or warmup <= 0:
        return 1.0
    t = min(max(step / warmup, 0.0), 1.0)
    if schedule == "linear":
        return t
    if schedule == "exponential":
        k = 5.0
        return min(1.0, (1 - math.exp(-k * t)) / (1 - math.exp(-k)))
    if schedule == "sigmoid":
        k = 10.0
        lo, hi = 1 / (1 + math.exp(k * 0.5)), 1 / (1 + math.exp(-k * 0.5))
        return (1 / (1 + math.exp(-k * (t - 0.5))) - lo) / (hi - lo)
    raise ValueError(f"lambda schedule must be one of {SCHEDULES}, got {schedule!r}")


def layer_index(name: str) -> int | None:
    """The decoder layer a module belongs to (`model.layers.3.mlp.up_proj` -> 3), None outside the layers."""
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


def convert(model: nn.Module, modules=PROJECTIONS, act_bits: int = 8, norm: bool = False,
            per_channel: bool = False, float_layers=()) -> list[str]:
    """Replace matching nn.Linear modules in place, except in the decoder layers `float_layers` (indices,
    negative from the end); returns their names."""
    n = model.config.num_hidden_layers
    bad = [i for i in float_layers if not -n <= i < n]
    if bad:
        raise ValueError(f"bitnet.float_layers {bad}: the model has {n} decoder layers (indices {-n}..{n - 1})")
    keep = {i % n for i in float_layers}
    replaced = []
    for name, mod in list(model.named_modules()):
        if (isinstance(mod, nn.Linear) and not isinstance(mod, BitLinear) and matches_suffix(name, modules)
                and layer_index(name) not in keep):
            model.set_submodule(name, BitLinear.from_linear(mod, act_bits, norm, per_channel))
            replaced.append(name)
    if not replaced:
        raise ValueError(f"no nn.Linear module matches {modules} outside the float layers {sorted(keep)}; check "
                         "bitnet.modules against the model's layer names and bitnet.float_layers against its depth")
    return replaced


def bit_layers(model: nn.Module) -> dict[str, BitLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BitLinear)}


def set_lambda(model: nn.Module, lam: float) -> None:
    for m in bit_layers(model).values():
        m.lam.fill_(lam)


def current_lambda(model: nn.Module) -> float:
    return float(next(iter(bit_layers(model).values())).lam)
