"""Stage 3, Quiet-STaR: teach the EvoMerge winner to think before each token (Zelikman et al. 2024).

Build: pick the thought tokens (`tokens.py`), initialise the thought embeddings and the mixing head
(`state.py`), train on the configured mixture with the parallel thought forward (`engine.py`) and the
Quiet-STaR objective (`loss.py`, `train.py`), then measure thought mode teacher-forced on held-out data
(`metrics.py`). The checkpoint is a plain HF model (the thought tokens' rows hold the trained thought
embeddings; `generation_config.suppress_tokens` keeps `generate` from emitting them) plus the sidecars
`quietstar.safetensors` (head) and `quietstar.json`, carried forward by later stages. Manifest metrics are
the standard suite in plain mode (the gates compare those); thought-mode numbers are in
`info.thought_metrics` (and the whole suite in thought mode under `info.thought_eval` with
`eval.thoughts=true`).
"""
from __future__ import annotations

import json
import random
import uuid
from typing import Iterator

import torch

from ..formats.files import add_sidecars
from ..model_io import load_model, save_model
from ..stages.contract import Built, StageContext, StageSpec
from ..training.sft_data import batches, focus_sequences
from .evaluate import evaluate_thoughts
from .metrics import effect_table, thought_metrics
from .plot import plot_history
from .settings import REFERENCE, QuietStarSettings
from .state import ThoughtState
from .tokens import prepare_tokens
from .train import train_quietstar

VERSION = 1
HISTORY_FILE = "quietstar_history.json"
PLOT_FILE = "quietstar.png"


def training_sequences(cfg: QuietStarSettings, tok, shots: int, data=None):
    """Equal shares of each focus's train split, `seq_len` tokens each (all tokens are LM targets)."""
    per = max(1, cfg.steps * cfg.batch_size // len(cfg.data) + 1)
    seqs = []
    for i, focus in enumerate(cfg.data):
        seqs += focus_sequences(focus, tok, per, cfg.seq_len, shots, cfg.seed + i, data)
    random.Random(cfg.seed).shuffle(seqs)
    return [(x, x) for x, _ in seqs]


def build(inputs: list[str], cfg: QuietStarSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    (parent,) = inputs
    model, tok = load_model(str(ctx.store.get(parent)), device=str(ctx.device))
    tokens = prepare_tokens(model, tok)
    torch.manual_seed(cfg.seed)
    state = ThoughtState.initial(model, tok, tokens, cfg.embedding_scale)
    ev = ctx.settings.eval
    seqs = training_sequences(cfg, tok, ev.shots, ev.data)
    history = train_quietstar(model, state, batches(seqs, cfg.batch_size, tok.pad_token_id, cfg.seed), cfg,
                              tok.pad_token_id, progress=lambda f, m: ctx.progress(0.8 * f, f"quietstar: {m}"))
    # what inference reads from now on (with a tied lm_head this also sets the two tokens' output rows)
    state.write_embeddings(model)
    ctx.progress(0.8, "quietstar: thought-mode metrics")
    info: dict = {
        "tokens": tokens.as_dict(), "thoughts": cfg.thoughts, "departures": cfg.departures(REFERENCE),
        "thought_metrics": thought_metrics(model, state, tok, ev, cfg.n_thought, cfg.eval_examples,
                                           cfg.eval_text_tokens),
        "train": _train_summary(history),
    }
    info["tables"] = {"thought mode against plain mode (test split; change ± paired standard error)":
                      effect_table(info["thought_metrics"])}
    if ev.thoughts:
        ctx.progress(0.9, "quietstar: the eval suite in thought mode")
        info["thought_eval"] = evaluate_thoughts(model, tok, state, cfg.n_thought, ev)
    model.generation_config.suppress_tokens = list(tokens.ids)
    folder = save_model(model, tok, ctx.work_dir / f"quietstar-{uuid.uuid4().hex}")
    names = state.save(folder, {"version": VERSION, "n_thought": cfg.n_thought, "n_talk": cfg.n_talk,
                                "n_passes": cfg.n_passes, "thoughts": cfg.thoughts})
    add_sidecars(folder, names)
    (folder / HISTORY_FILE).write_text(json.dumps(history))
    plot_history(history, folder / PLOT_FILE)
    ctx.log.info("quietstar: loss %.3f -> %.3f; held-out text NLL %.3f plain, %.3f with thoughts (hard tokens "
                 "%.3f -> %.3f); mean mixing weight %.3f", info["train"]["first_loss"], info["train"]["last_loss"],
                 info["thought_metrics"]["text_nll"], info["thought_metrics"]["text_nll_thought"],
                 info["thought_metrics"]["text_hard_nll"], info["thought_metrics"]["text_hard_nll_thought"],
                 info["thought_metrics"]["mix_mean"])
    yield Built(variant="", folder=folder, parent=parent, info=info, model=model, tokenizer=tok)


def _train_summary(history: list[dict]) -> dict:
    span = max(1, len(history) // 10)

    def mean(key, rows):
        vals = [r[key] for r in rows if key in r]
        return sum(vals) / len(vals) if vals else None

    return {
        "steps": len(history),
        "first_loss": mean("loss_talk", history[:span]), "last_loss": mean("loss_talk", history[-span:]),
        "first_base_loss": mean("loss_base", history[:span]), "last_base_loss": mean("loss_base", history[-span:]),
        "reward_positive_share": mean("reward_positive_share", history),
        "mix_mean_last": history[-1]["mix_mean"],
        "grad_norm_nll": mean("grad_norm_nll", history), "grad_norm_policy": mean("grad_norm_policy", history),
    }


SPEC = StageSpec(
    name="quietstar",
    version=VERSION,
    takes="one",
    build=build,
    settings=QuietStarSettings,
    description="Quiet-STaR: parallel thoughts at every position, a mixing head, REINFORCE on their usefulness.",
)
