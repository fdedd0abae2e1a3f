"""Stage 1, Cognate: N variants of the base model, each with its own cognitive focus.

Each variant is a short LoRA fine-tune on its focus's train split, merged into full weights:
- reasoning:   arithmetic word problems with worked steps   (focus metric: `arithmetic` accuracy)
- memory:      in-context key-value recall                  (focus metric: `recall` accuracy)
- language:    held-in natural text (language modelling)    (focus metric: held-out `perplexity`)
- instruction: short instructions with checkable formats    (focus metric: `instruction` accuracy)
Every variant is evaluated on the held-out test split; its focus gain is recorded in its manifest.
"""
from __future__ import annotations

import uuid
from typing import Iterator

from ..config import CognateSettings
from ..model_io import load_model, save_model
from ..training.lora import lora_config, merge_lora, train_lora
from ..training.sft_data import batches, focus_sequences
from .contract import Built, StageContext, StageSpec
from .registry import register

FOCUS_METRIC = {"reasoning": "arithmetic", "memory": "recall", "language": "perplexity", "instruction": "instruction"}


def build(inputs: list[str], cfg: CognateSettings, ctx: StageContext, variants: list[str]) -> Iterator[Built]:
    (parent,) = inputs
    src = ctx.store.get(parent)
    for i, focus in enumerate(variants):
        model, tok = load_model(str(src), device=str(ctx.device))
        seqs = focus_sequences(focus, tok, cfg.steps * cfg.batch_size, cfg.max_len, ctx.settings.eval.shots,
                               cfg.seed, ctx.settings.eval.data)
        data = batches(seqs, cfg.batch_size, tok.pad_token_id, cfg.seed + i)

        def progress(f: float, msg: str, _focus=focus, _i=i) -> None:
            ctx.progress((_i + f) / len(variants), f"cognate[{_focus}]: {msg}")

        peft_model, stats = train_lora(
            model, lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules),
            data, cfg.steps, cfg.lr, cfg.warmup, progress, cfg.seed,
        )
        merged = merge_lora(peft_model)
        folder = save_model(merged, tok, ctx.work_dir / f"cognate-{focus}-{uuid.uuid4().hex}")
        ctx.log.info("cognate[%s]: loss %.3f -> %.3f over %d steps", focus, stats.first_loss, stats.last_loss, stats.steps)
        yield Built(
            variant=focus, folder=folder, parent=parent, model=merged, tokenizer=tok,
            info={"focus": focus, "focus_metric": FOCUS_METRIC[focus], "train": stats.__dict__},
        )


SPEC = register(
    StageSpec(
        name="cognate",
        version=1,
        takes="one",
        build=build,
        variants=lambda cfg: list(cfg.focuses),
        description="N LoRA fine-tunes of the base model, one per cognitive focus, merged into full weights.",
    )
)
