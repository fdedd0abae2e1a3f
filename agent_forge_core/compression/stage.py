"""Stage 8, final compression: the input checkpoint as a compressed artifact (`compress.py`).

The runner evaluates the model *rebuilt from the artifact* on the test split and enforces the gates against
the input. With `target_bpw: auto` the stage first evaluates candidate plans itself, on the validation split
against the input's validation metrics (`_judge`), so the plan is chosen without seeing the test split.
Manifest info: bits per weight model-wide and over the coded tensors, bits per codec, the auto choices, the
rate-quality curve walked, fine-tuning losses, encode time per codec and the decode time (every tensor's
codec/bits/error is in compression.json).
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Iterator

import torch

from ..evals.gates import check_gates
from ..experts.expert import rebase_experts
from ..experts.two_pass import has_experts
from ..model_io import load_model
from ..stages.contract import Built, StageContext, StageSpec
from ..stages.evaluation import evaluate_built
from .compress import Judge, Traffic, compress_checkpoint
from .settings import CompressionSettings
from .target_search import Probe


def _judge(src: Path, cfg: CompressionSettings, ctx: StageContext, key: str) -> Judge:
    """Candidate state -> whether the model holding it passes the gates on the validation split. The input
    is loaded and evaluated at the first call (a plan without `auto` tensors never calls it)."""
    loaded: dict = {}

    def judge(state: dict[str, torch.Tensor]) -> Probe:
        if not loaded:
            model, tok = load_model(str(src), device=str(ctx.device))
            loaded.update(model=model, tok=tok, dtypes={n: p.dtype for n, p in model.state_dict().items()},
                          before=evaluate_built(model, tok, src, ctx, key, split="validation"))
        model, tok, dtypes = loaded["model"], loaded["tok"], loaded["dtypes"]
        model.load_state_dict({k: v.to(dtypes.get(k, v.dtype)) for k, v in state.items()}, strict=False)
        after = evaluate_built(model, tok, src, ctx, key, split="validation", verify_experts=False)
        gates = check_gates(loaded["before"], after, cfg.gates, ctx.settings.eval.noise_aware_gates)
        failed = [g.describe() for g in gates if not g.passed]
        return Probe(0.0, not failed, after, failed)

    return judge


def agent_traffic(parent: str, src: Path, cfg: CompressionSettings, ctx: StageContext) -> Traffic | None:
    """The agent's own traffic from every stage on the input's lineage that gave it a capability (`StageSpec.traffic`),
    measured on the input `src`; None when there is none or `calibration_traffic` is 0."""
    specs = [spec for m in ctx.store.lineage(parent) if (spec := ctx.stages(m.stage)) is not None and spec.traffic]
    if not specs or not cfg.calibration_traffic:
        return None

    def traffic(model, tok) -> list[list[int]]:
        scratch = ctx.work_dir / f"compression-traffic-{uuid.uuid4().hex[:8]}"
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            return [ids for spec in specs
                    for ids in spec.traffic(model, tok, src, ctx.settings, scratch, cfg.calibration_traffic)]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return traffic


def build(inputs: list[str], cfg: CompressionSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    (parent,) = inputs
    src = ctx.store.get(parent)
    folder = ctx.work_dir / f"compression-{uuid.uuid4().hex}"
    judge = _judge(src, cfg, ctx, keys[""]) if cfg.target_bpw == "auto" else None
    info = compress_checkpoint(src, cfg, folder, str(ctx.device), ctx.progress, ctx.log, parent, judge,
                               agent_traffic(parent, src, cfg, ctx))
    model = tok = None  # evaluated as rebuilt from the artifact
    if has_experts(folder):  # the experts (carried from the input) now run on the re-encoded weights
        model, tok = load_model(str(folder), device=str(ctx.device))
        info["experts_fingerprint_drift"] = rebase_experts(folder, model)
        ctx.log.info("compression: experts re-anchored to the compressed weights; fingerprint drift %s",
                     {k: round(v, 4) for k, v in info["experts_fingerprint_drift"].items()})
    yield Built(variant="", folder=folder, parent=parent, info=info, model=model, tokenizer=tok)


def gate_advice(cfg: CompressionSettings, info: dict) -> str:
    size = f"This plan has {info['bits_per_weight']:.3f} bits per weight"
    nxt = info.get("next_larger_bpw")
    if nxt is None:
        return (f"{size}, the largest the rules allow: give the failing tensors codecs with more bits in "
                "compression.rules or compression.auto_candidates, or loosen compression.gates.")
    how = "passed on the validation split but not on the test split; " if cfg.target_bpw == "auto" else ""
    return (f"{size} and {how}the next larger plan has {nxt:.3f}: set compression.target_bpw: {nxt:.3f} (or "
            "loosen compression.gates).")


SPEC = StageSpec(
    name="compression",
    version=5,  # 4: experts carried are measured routed (NLLs too) by `evaluate_built`; 5: the agent's traffic
    takes="one",
    build=build,
    settings=CompressionSettings,
    gate_advice=gate_advice,
    description="Final compression: SeedLM / VPTQ / Hyper-Compression / GPTQ / RTN / GGUF blocks per tensor (plan "
                "or auto), the smallest plan whose gates pass, codebooks fine-tuned, an artifact that rebuilds the model.",
)
