"""How the runner evaluates a built model, for stages that evaluate candidates themselves (compression's
`target_bpw: auto` judges plans on the validation split the same way the runner judges the output)."""
from __future__ import annotations

from pathlib import Path

from ..evals.suite import evaluate
from .contract import StageContext


def runtime_completer(folder: Path, model, tok, ctx: StageContext, key: str, verify_experts: bool = True):
    """A checkpoint that carries a runtime (`runtime.json`) or SVF experts is evaluated as the agent it is: its
    tools in the loop (a fresh, throwaway memory session per evaluation), each prompt with its dispatched expert
    (`verify_experts=False`: `model` holds a re-encoding of `folder`'s weights, see `TwoPass`)."""
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
    return runtime.completer(ctx.settings.eval.max_new_tokens)


def evaluate_built(model, tok, folder: Path, ctx: StageContext, key: str, split: str = "test", progress=None,
                   verify_experts: bool = True) -> dict:
    """The eval suite on `split`, through the checkpoint's agent runtime where it carries one."""
    return evaluate(model, tok, ctx.settings.eval, split=split, progress=progress,
                    complete=runtime_completer(folder, model, tok, ctx, key, verify_experts))
