"""The eval suite in thought mode (`eval.thoughts=true`): perplexities and NLLs from the mixed predictions
after a greedy thought at every position (`generate.ThoughtLM`), accuracies from the thought-mode
generator. For a checkpoint folder, the state comes from its sidecars."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..evals.suite import evaluate
from .generate import ThoughtLM, thought_completer
from .state import ThoughtState, has_thoughts


def evaluate_thoughts(model, tokenizer, state: ThoughtState, n_thought: int, eval_cfg, split: str = "test",
                      progress=None) -> dict[str, float]:
    return evaluate(ThoughtLM(model, state, n_thought), tokenizer, eval_cfg, split=split, progress=progress,
                    complete=thought_completer(model, state, n_thought, eval_cfg.max_new_tokens))


def evaluate_checkpoint_thoughts(model, tokenizer, folder: str | Path, eval_cfg, split: str = "test") -> dict[str, float]:
    if not has_thoughts(folder):
        raise ConfigError(f"eval.thoughts=true but {folder} carries no Quiet-STaR state (quietstar.json, "
                          "quietstar.safetensors): evaluate a checkpoint of the quietstar stage or of a stage after "
                          "it, or set eval.thoughts=false")
    state, meta = ThoughtState.load(folder, model)
    return evaluate_thoughts(model, tokenizer, state, meta["n_thought"], eval_cfg, split)
