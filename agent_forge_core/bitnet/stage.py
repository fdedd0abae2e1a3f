"""Stage 4, BitNet b1.58: ternary weights, 8-bit activations, quantization-aware training (STE).

The chosen linears become BitLinear; a short QAT fine-tune on the configured mixture ramps
quantization in with the lambda schedule (`bitnet.convert`), then the checkpoint is written packed
(`formats/bitnet.py`). The runner evaluates the model rebuilt from the packed files, so the metrics
in the manifest are those of the packed inference path. Plain post-training ternarization (no
training) is evaluated too and recorded as `info.ptq_metrics`.
"""
from __future__ import annotations

import random
import uuid
from typing import Iterator

from ..evals.suite import evaluate
from ..formats.bitnet import save_bitnet
from ..model_io import load_model
from ..stages.contract import Built, StageContext, StageSpec
from ..training.loop import train
from ..training.sft_data import batches, focus_sequences
from .convert import convert, lambda_at, set_lambda
from .settings import BitnetSettings


def build(inputs: list[str], cfg: BitnetSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    (parent,) = inputs
    model, tok = load_model(str(ctx.store.get(parent)), device=str(ctx.device))
    names = convert(model, cfg.modules, cfg.act_bits, cfg.norm)
    ctx.log.info("bitnet: %d linear layers ternarized", len(names))
    info: dict = {"layers": len(names), "packing": cfg.packing}
    if cfg.measure_ptq:
        set_lambda(model, 1.0)
        ctx.progress(0.0, "bitnet: evaluating post-training ternarization")
        info["ptq_metrics"] = evaluate(model, tok, ctx.settings.eval)
    per = max(1, cfg.steps * cfg.batch_size // len(cfg.data))
    seqs = []
    for i, focus in enumerate(cfg.data):
        seqs += focus_sequences(focus, tok, per, cfg.max_len, ctx.settings.eval.shots, cfg.seed + i, ctx.settings.eval.data)
    random.Random(cfg.seed).shuffle(seqs)
    for p in model.parameters():
        p.requires_grad_(True)
    stats = train(
        model, batches(seqs, cfg.batch_size, tok.pad_token_id, cfg.seed), cfg.steps, cfg.lr, cfg.lr_warmup,
        progress=lambda f, m: ctx.progress(f, f"bitnet QAT: {m}"),
        before_step=lambda step: set_lambda(model, lambda_at(step, cfg.warmup, cfg.schedule)),
        seed=cfg.seed,
    )
    set_lambda(model, 1.0)
    folder = ctx.work_dir / f"bitnet-{uuid.uuid4().hex}"
    info["bits"] = save_bitnet(model, tok, folder, cfg.packing)
    info["train"] = stats.__dict__
    ctx.log.info("bitnet: loss %.3f -> %.3f, %.3f bits/weight overall",
                 stats.first_loss, stats.last_loss, info["bits"]["bits_per_weight_model"])
    yield Built(variant="", folder=folder, parent=parent, info=info)  # evaluated from the packed files


SPEC = StageSpec(
    name="bitnet",
    version=1,
    takes="one",
    build=build,
    settings=BitnetSettings,
    description="BitNet b1.58: ternary weights, 8-bit activations, QAT with a lambda warm-up, packed storage.",
)
