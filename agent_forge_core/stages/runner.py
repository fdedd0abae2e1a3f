"""Runs one planned stage: reuse what is stored and verifies, build the rest, evaluate, gate, publish."""
from __future__ import annotations

import math
import shutil
import time

from ..errors import GateFailed
from ..evals.gates import enforce_gates
from ..formats.files import carry_sidecars
from ..model_io import load_model
from ..store import Manifest
from .contract import StageContext, StageResult, StageSpec
from .evaluation import evaluate_built
from .plan import PlannedStage, code_version, output_keys, stage_config_hash
from .registry import get_stage


def run_stage(spec: StageSpec, planned: PlannedStage, ctx: StageContext) -> StageResult:
    section = ctx.settings.section(spec.name)
    keys, inputs = planned.keys, planned.inputs
    missing = {v: k for v, k in keys.items() if not _reusable(ctx, spec.name, k)}
    if missing:
        ch, cv = stage_config_hash(spec, ctx.settings), code_version(spec)
        n = len(missing)
        since = time.monotonic()
        for i, built in enumerate(spec.build(list(inputs), section, ctx, missing)):
            key = keys[built.variant]
            if built.parent:
                carry_sidecars(ctx.store.get(built.parent), built.folder)
            model, tok = built.model, built.tokenizer
            if model is None:
                model, tok = load_model(str(built.folder), device=str(ctx.device))
            ctx.progress(i / n, f"{spec.name}: evaluating {key}")
            if spec.evaluate:
                metrics = spec.evaluate(model, tok, ctx.settings.eval, built.folder)
            else:
                metrics = evaluate_built(model, tok, built.folder, ctx, key,
                                         progress=lambda f, m, _i=i: ctx.progress(_i / n, f"{spec.name}: {key}: {m}"))
            del model
            broken = sorted(k for k, v in metrics.items() if not math.isfinite(v))
            if broken:
                shutil.rmtree(built.folder, ignore_errors=True)
                raise GateFailed(f"stage {spec.name!r} built {key} with non-finite metrics ({', '.join(broken)}): the "
                                 "model produces NaN or inf; no checkpoint was written")
            gates = []
            if built.parent:
                before = ctx.store.manifest(built.parent).metrics
                advice = spec.gate_advice(section, built.info) if spec.gate_advice else None
                try:
                    gates = enforce_gates(spec.name, key, before, metrics, section.gates, advice,
                                          ctx.settings.eval.noise_aware_gates)
                except GateFailed:
                    shutil.rmtree(built.folder, ignore_errors=True)
                    raise
            manifest = Manifest(
                key=key, stage=spec.name, parents=list(inputs), config_hash=ch, code_version=cv, metrics=metrics,
                # wall_s: this output's build and evaluation (a stage's outputs are built one after another)
                info={**built.info, "variant": built.variant, "compared_to": built.parent,
                      "gates": [g.as_dict() for g in gates], "wall_s": round(time.monotonic() - since, 1)},
            )
            ctx.store.put(key, built.folder, manifest, consume=True)
            shutil.rmtree(built.folder, ignore_errors=True)
            ctx.log.info("%s: wrote %s %s", spec.name, key, _fmt(metrics))
            ctx.progress((i + 1) / n, f"{spec.name}: wrote {key}")
            since = time.monotonic()
    manifests = {k: ctx.store.manifest(k) for k in keys.values()}
    return StageResult(
        stage=spec.name,
        outputs=list(keys.values()),
        metrics={k: m.metrics for k, m in manifests.items()},
        reused=not missing,
        info={k: m.info for k, m in manifests.items()},
    )


def _reusable(ctx: StageContext, stage: str, key: str) -> bool:
    """A stored output is reused only if it verifies (sizes; digests too where the store is local, where
    reading is cheap: on S3 the next stage's download checks them); a damaged one is discarded and rebuilt."""
    if not ctx.store.exists(key):
        return False
    problems = ctx.store.verify(key, digests=ctx.store.is_local)
    if problems:
        ctx.log.warning("%s: stored %s is damaged (%s); discarding it and building it again", stage, key,
                        "; ".join(problems[:3]))
        ctx.store.discard(key)
        return False
    ctx.log.info("%s: %s already in the store, reused", stage, key)
    return True


def run_stage_on(name: str, inputs: list[str], ctx: StageContext) -> StageResult:
    """One stage outside a flow (benchmarks, notebooks, tests): derive its keys, then run it."""
    spec = get_stage(name)
    return run_stage(spec, PlannedStage(name, list(inputs), output_keys(spec, list(inputs), ctx.settings)), ctx)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.endswith("_nll"))
