"""Mixed precision for the stages that train or decode on CPU (bfloat16 dot products: ~3.5x a float32 576x1536
matmul on 2 cores, measured in bench/baking_speed.py)."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


@contextmanager
def autocast(device, precision: str, model=None):
    """bfloat16 autocast on `device` when `precision` says so (a no-op context otherwise); with `model`, its
    frozen linear weights are also held in bfloat16 for the context (`bfloat16_weights`)."""
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bfloat16"), \
            (held_weights(model, precision) if model is not None else nullcontext()):
        yield


def held_weights(model, precision: str):
    """`bfloat16_weights(model)` when `precision` says bfloat16, else a no-op context (for a training step whose
    backward runs outside autocast but should reuse the forward's copies)."""
    return bfloat16_weights(model) if precision == "bfloat16" else nullcontext()


@contextmanager
def bfloat16_weights(model):
    """Every plain `nn.Linear` of `model` whose weight is frozen float32 holds a bfloat16 copy of it inside the
    context; the float32 parameter is put back on exit (training, merging and saving see it unchanged).

    Autocast casts a linear's weight to bfloat16 at every call and caches the cast only for weights that
    require grad: a model after a LoRA merge (frozen) paid the cast of every matrix, its tied output head (the
    embedding's matrix, 21% of SmolLM2-135M) included, at every decoding step. The copy gives the matmul the
    operands autocast would (logits identical, tested), made once per context; on the default model, 2 cores,
    28 tool trajectories sampled on a frozen model took 20.8 s with per-call casts and 16.1 s with the copies,
    the same ids (bench/baking_speed.py; a decoding step of 8 rows 0.103 s -> 0.059 s).
    Module attributes are swapped, not `.data`, so a tied head gets its own copy while the embedding lookup
    stays float32. Subclasses are left alone (BitNet's BitLinear quantizes its own latent weights)."""
    swapped = [(mod, mod.weight) for mod in model.modules()
               if type(mod) is torch.nn.Linear and mod.weight.dtype == torch.float32 and not mod.weight.requires_grad]
    copies: dict[int, torch.nn.Parameter] = {}  # a matrix shared by several linears is copied once
    try:
        for mod, w in swapped:
            if id(w) not in copies:
                copies[id(w)] = torch.nn.Parameter(w.detach().to(torch.bfloat16), requires_grad=False)
            mod.weight = copies[id(w)]
        yield
    finally:
        for mod, w in swapped:
            mod.weight = w
