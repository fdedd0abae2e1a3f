"""Stage 4, BitNet b1.58: ternary weights, 8-bit activations, quantization-aware training (STE).

The chosen linears become BitLinear; a short QAT fine-tune on the configured mixture ramps
quantization in with the lambda schedule (`bitnet.convert`), on the labels' cross-entropy or, with
`bitnet.distill.kl_weight` > 0, also the KL to the float input's next-token distributions (`training/distill.py`),
then the checkpoint is written packed
(`formats/bitnet.py`). The runner evaluates the model rebuilt from the packed files, so the metrics
in the manifest are those of the packed inference path. Plain post-training ternarization (no
training) is evaluated too and recorded as `info.ptq_metrics`.
"""
from __future__ import annotations

import random
import time
import uuid
from contextlib import nullcontext
from typing import Iterator

from ..evals.suite import evaluate, perplexity
from ..evals.text import natural_text
from ..formats.bitnet import save_bitnet
from ..model_io import load_model
from ..stages.contract import Built, StageContext, StageSpec
from ..training.distill import distilled_loss
from ..training.focuses import mixture_counts
from ..training.loop import train
from ..training.precision import held_weights
from ..training.sft_data import batches, focus_sequences
from .convert import convert, current_lambda, lambda_at, set_lambda
from .settings import BitnetSettings


class TokenCurve:
    """Validation perplexity of the ternary model (lambda 1, whatever the warm-up's lambda is) against the
    training tokens seen (attended positions of the QAT batches): how many tokens a recipe needs."""

    def __init__(self, model, tok, cfg: BitnetSettings, window: int):
        self.model, self.tok, self.cfg, self.window = model, tok, cfg, min(window, cfg.curve_tokens)
        self.text = natural_text("validation") if cfg.curve_every else ""
        self.tokens, self.points, self.seconds = 0, [], 0.0

    def counted(self, it: Iterator[dict]) -> Iterator[dict]:
        for batch in it:
            self.tokens += int(batch["attention_mask"].sum())
            yield batch

    def record(self, step: int) -> None:
        t0, lam, was_training = time.perf_counter(), current_lambda(self.model), self.model.training
        set_lambda(self.model, 1.0)
        self.model.eval()
        ppl = perplexity(self.model, self.tok, self.text, self.cfg.curve_tokens, self.window)
        set_lambda(self.model, lam)
        self.model.train(was_training)
        self.points.append({"step": step, "tokens": self.tokens, "perplexity": ppl})
        self.seconds += time.perf_counter() - t0


def qat_sequences(tok, cfg: BitnetSettings, n: int, shots: int, data=None) -> list:
    """The QAT training sequences: `n` split over `cfg.data` by `cfg.data_share` (`mixture_counts`), shuffled."""
    counts = mixture_counts(n, cfg.data, cfg.data_share)
    seqs = []
    for i, focus in enumerate(cfg.data):
        seqs += focus_sequences(focus, tok, counts[focus], cfg.max_len, shots, cfg.seed + i, data)
    random.Random(cfg.seed).shuffle(seqs)
    return seqs


def build(inputs: list[str], cfg: BitnetSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    (parent,) = inputs
    model, tok = load_model(str(ctx.store.get(parent)), device=str(ctx.device))
    teacher = None
    if cfg.distill.kl_weight > 0:  # the float input itself, loaded again (after the student: loads are serialized)
        teacher, _ = load_model(str(ctx.store.get(parent)), device=str(ctx.device))
        teacher.eval().requires_grad_(False)
    names = convert(model, cfg.modules, cfg.act_bits, cfg.norm, per_channel=cfg.scales == "channel",
                    float_layers=cfg.float_layers)
    ctx.log.info("bitnet: %d linear layers ternarized", len(names))
    info: dict = {"layers": len(names), "packing": cfg.packing}
    if cfg.measure_ptq:
        set_lambda(model, 1.0)
        ctx.progress(0.0, "bitnet: evaluating post-training ternarization")
        info["ptq_metrics"] = evaluate(model, tok, ctx.settings.eval)
    seqs = qat_sequences(tok, cfg, cfg.steps * cfg.batch_size, ctx.settings.eval.shots, ctx.settings.eval.data)
    for p in model.parameters():
        p.requires_grad_(True)
    curve = TokenCurve(model, tok, cfg, ctx.settings.eval.ppl_window)

    def before_step(step: int) -> None:
        if cfg.curve_every and step % cfg.curve_every == 0:  # step 0: post-training ternarization
            curve.record(step)
        set_lambda(model, lambda_at(step, cfg.warmup, cfg.schedule))

    # the frozen teacher's bfloat16 copies last the whole run (its forward runs in the steps' autocast)
    with held_weights(teacher, cfg.train_precision) if teacher is not None else nullcontext():
        stats = train(
            model, curve.counted(batches(seqs, cfg.batch_size, tok.pad_token_id, cfg.seed)), cfg.steps, cfg.lr,
            cfg.lr_warmup, progress=lambda f, m: ctx.progress(f, f"bitnet QAT: {m}"), before_step=before_step,
            seed=cfg.seed, loss_fn=distilled_loss(teacher, cfg.distill) if teacher is not None else None,
            precision=cfg.train_precision, attention=cfg.train_attention,
        )
    del teacher
    set_lambda(model, 1.0)
    if cfg.curve_every:
        curve.record(cfg.steps)
        info["curve"] = curve.points
    folder = ctx.work_dir / f"bitnet-{uuid.uuid4().hex}"
    info["bits"] = save_bitnet(model, tok, folder, cfg.packing, cfg.embeddings)
    # QAT's own wall time: the loop's less the curve's measurements inside it (a budget is training time)
    info["train"] = {**stats.__dict__, "qat_s": stats.wall_s - curve.seconds}
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
