"""Runs one stage: derive keys, skip what exists, build, evaluate, gate, publish."""
from __future__ import annotations

import shutil

from .. import __version__
from ..config import config_hash
from ..evals.gates import enforce_gates
from ..evals.suite import evaluate
from ..keys import checkpoint_key
from ..model_io import load_model
from ..store import Manifest
from .contract import StageContext, StageResult, StageSpec


def stage_config_hash(spec: StageSpec, ctx: StageContext) -> str:
    """Hash of everything in the config that shapes the stage's output or its manifest's metrics."""
    s = ctx.settings
    own = spec.hashed_config(s) if spec.hashed_config else s.section(spec.name)
    return config_hash({"stage": own, "eval": s.eval})


def code_version(spec: StageSpec) -> str:
    return f"{__version__}+{spec.name}.v{spec.version}"


def output_keys(spec: StageSpec, inputs: list[str], ctx: StageContext) -> dict[str, str]:
    ch, cv = stage_config_hash(spec, ctx), code_version(spec)
    return {v: checkpoint_key(spec.name, inputs, ch, cv, v) for v in spec.variants(ctx.settings.section(spec.name))}


def run_stage(spec: StageSpec, inputs: list[str], ctx: StageContext) -> StageResult:
    section = ctx.settings.section(spec.name)
    keys = output_keys(spec, inputs, ctx)
    missing = [v for v, k in keys.items() if not ctx.store.exists(k)]
    for v, k in keys.items():
        if v not in missing:
            ctx.log.info("%s: %s already in the store, reused", spec.name, k)
    if missing:
        ch, cv = stage_config_hash(spec, ctx), code_version(spec)
        n = len(missing)
        for i, built in enumerate(spec.build(inputs, section, ctx, missing)):
            key = keys[built.variant]
            model, tok = built.model, built.tokenizer
            if model is None:
                model, tok = load_model(str(built.folder), device=str(ctx.device))
            ctx.progress(i / n, f"{spec.name}: evaluating {key}")
            metrics = evaluate(model, tok, ctx.settings.eval)
            del model
            gates = []
            if built.parent:
                before = ctx.store.manifest(built.parent).metrics
                gates = enforce_gates(spec.name, key, before, metrics, section.gates)
            manifest = Manifest(
                key=key, stage=spec.name, parents=list(inputs), config_hash=ch, code_version=cv, metrics=metrics,
                info={**built.info, "variant": built.variant, "compared_to": built.parent,
                      "gates": [g.__dict__ for g in gates]},
            )
            ctx.store.put(key, built.folder, manifest)
            shutil.rmtree(built.folder, ignore_errors=True)
            ctx.log.info("%s: wrote %s %s", spec.name, key, _fmt(metrics))
            ctx.progress((i + 1) / n, f"{spec.name}: wrote {key}")
    manifests = {k: ctx.store.manifest(k) for k in keys.values()}
    return StageResult(
        stage=spec.name,
        outputs=list(keys.values()),
        metrics={k: m.metrics for k, m in manifests.items()},
        reused=not missing,
        info={k: m.info for k, m in manifests.items()},
    )


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.endswith("_nll"))
