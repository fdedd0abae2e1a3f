"""How the runner evaluates a built model, for stages that evaluate candidates themselves (compression's
`target_bpw: auto` judges plans on the validation split the same way the runner judges the output)."""
from __future__ import annotations

from pathlib import Path

from ..evals.suite import evaluate
from .contract import StageContext


def agent_runtime(folder: Path, model, tok, ctx: StageContext, key: str, verify_experts: bool = True):
    """The runtime a checkpoint that carries one (`runtime.json`) or SVF experts is evaluated through: its tools in
    the loop (a fresh, throwaway memory session per evaluation) and its experts' dispatcher; None for a bare model.
    `verify_experts=False`: `model` holds a re-encoding of `folder`'s weights, see `TwoPass`."""
    from ..agent.runtime import Runtime
    from ..agent.settings import RUNTIME_FILE, RuntimeSpec
    from ..experts.two_pass import has_experts

    has_runtime = (Path(folder) / RUNTIME_FILE).is_file()
    if not has_runtime and not has_experts(folder):
        return None
    # experts without a runtime: the bare model, routed (no tools, no instructions: what the suite asks otherwise)
    spec = None if has_runtime else RuntimeSpec(tools=[], instructions=False)
    runtime = Runtime.open(folder, model, tok, ctx.settings.agent, session=f"eval-{key}", model_key=key, spec=spec,
                           verify_experts=verify_experts)
    runtime.memory.clear()
    return runtime


def evaluate_built(model, tok, folder: Path, ctx: StageContext, key: str, split: str = "test", progress=None,
                   verify_experts: bool = True) -> dict:
    """The eval suite on `split`, as the checkpoint's agent answers: through its runtime's tools where it carries
    one, and every measurement (answers, target NLLs, perplexities) with the expert its dispatcher picks where it
    carries experts. One method for every checkpoint of the chain, so that a stage's gates compare like with like
    (the experts stage once measured NLLs with routed experts and compression after it without them: recall NLL
    0.14 -> 1.08 on a 6-bit plan, a gate failure that was the evaluation's, not the compression's)."""
    runtime = agent_runtime(folder, model, tok, ctx, key, verify_experts)
    if runtime is None:
        return evaluate(model, tok, ctx.settings.eval, split=split, progress=progress)
    return evaluate(model, tok, ctx.settings.eval, split=split, progress=progress,
                    complete=runtime.completer(ctx.settings.eval.max_new_tokens, route=False),
                    router=runtime.two_pass)
