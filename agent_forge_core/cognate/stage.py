"""Stage 1, Cognate: N variants of the base model, each with its own cognitive focus.

Each variant is a short LoRA fine-tune on its focus's train split, merged into full weights (the focuses
and their metrics: `training/focuses.py`). A task focus rehearses language modelling: `replay` of its
sequences are windows of held-in natural text (measured on SmolLM2: the memory cognate alone drifts to
×1.9 the base perplexity, over the default gate; with 10% replay it stays below the base, README). Every
variant is evaluated on the held-out test split; its focus and focus metric are recorded in its manifest.
"""
from __future__ import annotations

import uuid
from typing import Iterator

from ..model_io import load_model, save_model
from ..stages.contract import Built, StageContext, StageSpec
from ..training.focuses import FOCUSES
from ..training.lora import lora_config, merge_lora, train_lora
from ..training.sft_data import batches, focus_sequences, with_replay
from .settings import CognateSettings


def build(inputs: list[str], cfg: CognateSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    (parent,) = inputs
    src = ctx.store.get(parent)
    todo = list(keys)
    for n, focus in enumerate(todo):
        # Seeded by the focus's place in the configured list (part of the key), never by its place among
        # the variants still missing: a resumed build gives the same bytes as an uninterrupted one.
        seed = cfg.seed + cfg.focuses.index(focus)
        model, tok = load_model(str(src), device=str(ctx.device))
        seqs = focus_sequences(focus, tok, cfg.steps * cfg.batch_size, cfg.max_len, ctx.settings.eval.shots,
                               cfg.seed, ctx.settings.eval.data)
        if FOCUSES[focus].task is not None:
            seqs = with_replay(seqs, tok, cfg.replay, cfg.max_len, cfg.seed + 99)
        data = batches(seqs, cfg.batch_size, tok.pad_token_id, seed)

        def progress(f: float, msg: str, _focus=focus, _n=n) -> None:
            ctx.progress((_n + f) / len(todo), f"cognate[{_focus}]: {msg}")

        peft_model, stats = train_lora(
            model, lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules),
            data, cfg.steps, cfg.lr, cfg.warmup, progress, cfg.seed, cfg.train_precision, cfg.train_attention,
        )
        merged = merge_lora(peft_model)
        folder = save_model(merged, tok, ctx.work_dir / f"cognate-{focus}-{uuid.uuid4().hex}")
        ctx.log.info("cognate[%s]: batch loss (replay text included) %.3f -> %.3f, first vs last 10%% of %d steps", focus, stats.first_loss, stats.last_loss, stats.steps)
        yield Built(
            variant=focus, folder=folder, parent=parent, model=merged, tokenizer=tok,
            info={"focus": focus, "focus_metric": FOCUSES[focus].metric, "train": stats.__dict__},
        )


SPEC = StageSpec(
    name="cognate",
    version=2,  # 2: replay of natural text in task focuses
    takes="one",
    build=build,
    settings=CognateSettings,
    variants=lambda cfg: list(cfg.focuses),
    description="N LoRA fine-tunes of the base model, one per cognitive focus, merged into full weights.",
)
