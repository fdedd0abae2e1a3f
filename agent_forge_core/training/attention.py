"""The attention kernel a training step runs with, chosen per context."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def attention_kernel(model, implementation: str):
    """`model`'s attention set to transformers' `implementation` ("eager", "sdpa") inside the context and put back
    on exit (a peft wrapper sets its base model's).

    Why training may want another kernel than decoding: on CPU, PyTorch's flash-attention backward
    (`_scaled_dot_product_flash_attention_for_cpu_backward`) was 18% of a baking step (8 rows of 44-200 tokens,
    SmolLM2-135M, bfloat16, 2 cores; torch.profiler); 6 baking steps on retrieval rows took 15.5 s with sdpa and
    12.5 s eager (bench/baking_speed.py), while decoding ran as fast either way and a 400-token prefill was faster
    with sdpa. Both compute softmax(QK^T/sqrt(d) + mask)V; the losses agree to float rounding (tested)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = inner.config._attn_implementation
    if before == implementation:
        yield
        return
    inner.set_attn_implementation(implementation)
    try:
        yield
    finally:
        inner.set_attn_implementation(before)
