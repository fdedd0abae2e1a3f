"""Stage 5, the 10-phase training loop (issue 15; design note §2): base adaptation, edge-of-chaos, dreaming,
self-modelling and stabilisation, each phase a mechanism of its own module (`phases.py` runs them).

Input: a BitNet checkpoint (its latents rebuilt from the packed codes, trained under the STE at λ = 1, written
back packed) or a float one (written float). A ternary input distils from the nearest float ancestor in its
lineage (`objective.py`). After every phase: a validation eval (`loop.val_examples` per task, the validation
split), the combined score (EvoMerge's formula), and the phase gate (`gate.py`) — a phase that lowers the score by
more than `loop.tolerance` against the best phase kept so far, counting an accuracy drop only beyond `loop.gate_z`
standard errors, is rolled back (the state before it is restored) and recorded.

Resume: each phase boundary (but the last, unless `loop.runtime.keep_state`) writes the exact training state to
`<work_dir>/loop/<output key>/latest` (`state.py`) and, where the store is remote or on another disk
(`loop.runtime.publish_phases`), publishes the model as the internal checkpoint `<output key>-p<k>`. A rerun
continues after the last finished phase: bit-identically from the work dir's state on the same machine, else from
the stored phase checkpoint with the optimizer reset (recorded in `info.resumed`). Both are removed once the
output is published.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

import torch

from ..evals.suite import evaluate
from ..evomerge.fitness import combined_score
from ..formats import bitnet as bitnet_format
from ..formats import compressed as compressed_format
from ..model_io import load_model, save_model
from ..stages.contract import Artifact, Built, StageContext, StageSpec
from ..store import CheckpointStore, Manifest
from .gate import judge, reference_row
from .phases import Trainer, run_phase
from .plot import plot_phases
from .settings import LoopSettings
from .state import LoopState, has_state, load_state, save_state

VERSION = 2  # 2: the noise-aware phase gate
HISTORY_FILE = "loop_history.json"
PLOT_FILE = "loop_phases.png"


def state_dir(ctx: StageContext, key: str) -> Path:
    return Path(ctx.settings.work_dir).expanduser().resolve() / "loop" / key / "latest"


def phase_key(key: str, k: int) -> str:
    return f"{key}-p{k}"


def load_input(folder: Path, ctx: StageContext):
    """(model with trainable weights, tokenizer, ternary?, BitNet storage layout: `save_bitnet`'s arguments)."""
    if bitnet_format.detect(folder):
        model, tok = bitnet_format.load_bitnet(folder, trainable=True, device=str(ctx.device))
        return model, tok, True, bitnet_format.layout(folder)
    if compressed_format.detect(folder):
        raise ValueError(f"loop: the input {folder.name} is a compressed artifact; the loop trains before the final "
                         "compression (put loop before compression in the pipeline)")
    model, tok = load_model(str(folder), device=str(ctx.device))
    return model, tok, False, None


def float_teacher(parent: str, ctx: StageContext, log):
    """The nearest ancestor of `parent` that is a float checkpoint (the manifests' first parents), or None."""
    for m in reversed(ctx.store.lineage(parent)[:-1]):
        folder = Path(ctx.store.get(m.key))
        if not bitnet_format.detect(folder) and not compressed_format.detect(folder):
            teacher, _ = load_model(str(folder), device=str(ctx.device))
            for p in teacher.parameters():
                p.requires_grad_(False)
            log.info("loop: distilling from the float ancestor %s", m.key)
            return teacher.eval(), m.key
    return None, None


def validate(tr: Trainer, ctx: StageContext, cfg: LoopSettings) -> tuple[dict, float]:
    ev = ctx.settings.eval.model_copy(update={"n_examples": cfg.val_examples, "ppl_tokens": cfg.val_ppl_tokens})
    tr.model.eval()
    metrics = evaluate(tr.model, tr.tok, ev, split="validation")
    return metrics, combined_score(metrics, score_weights(ctx, cfg, metrics))


def score_weights(ctx: StageContext, cfg: LoopSettings, metrics: dict) -> dict[str, float]:
    weights = cfg.score or ctx.settings.evomerge.fitness
    return {m: w for m, w in weights.items() if m in metrics}


def save_output(model, tok, folder: Path, ternary: bool, packing: dict | None) -> dict:
    if ternary:
        return {"bits": bitnet_format.save_bitnet(model, tok, folder, **packing)}
    save_model(model, tok, folder)
    return {}


def publishes_phases(ctx: StageContext, cfg: LoopSettings) -> bool:
    """Whether phase checkpoints go to the store: they guard against losing the work dir, which a store on the
    work dir's own filesystem does not survive either (`loop.runtime.publish_phases`)."""
    mode = cfg.runtime.publish_phases
    if mode != "auto":
        return mode == "always"
    if not ctx.store.is_local:
        return True
    work = Path(ctx.settings.work_dir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    return os.stat(ctx.store.root).st_dev != os.stat(work).st_dev


def publish_phase(ctx: StageContext, key: str, parent: str, k: int, tr: Trainer, ternary: bool, packing, state):
    folder = ctx.work_dir / f"loop-phase-{uuid.uuid4().hex}"
    save_output(tr.model, tr.tok, folder, ternary, packing)
    pk = phase_key(key, k)
    if ctx.store.exists(pk):  # a rerun of a phase that was rolled back or lost its work-dir state
        ctx.store.discard(pk)
    ctx.store.put(pk, folder, Manifest(key=pk, stage="loop", parents=[parent], config_hash="",
                                       code_version=f"loop.v{VERSION}",
                                       info={"internal": f"loop phase {k}", "state": dict(state.__dict__)}),
                  consume=True)
    shutil.rmtree(folder, ignore_errors=True)


def resume(ctx: StageContext, key: str, cfg: LoopSettings, tr: Trainer, ternary: bool) -> LoopState | None:
    """The state to continue from, or None for a fresh loop."""
    sdir = state_dir(ctx, key)
    if has_state(sdir):
        state = load_state(sdir, tr.model, tr.opt, tr.grokfast, tr.noise_gen)
        ctx.log.info("loop: resuming after phase %d from the exact state in %s", state.phase, sdir)
        return state
    done = [k for k in range(len(cfg.phases), 0, -1) if ctx.store.exists(phase_key(key, k))]
    if not done:
        return None
    pk = phase_key(key, done[0])
    stored, _, _, _ = load_input(Path(ctx.store.get(pk)), ctx)
    tr.model.load_state_dict(stored.state_dict())
    state = LoopState(**ctx.store.manifest(pk).info["state"])
    state.extra["resumed"] = (f"after phase {state.phase} from the stored checkpoint {pk}: the optimizer moments, the "
                              "Grokfast EMA" + (" and the ternary latents (rebuilt from the codes)" if ternary else "")
                              + " were reset, so this is not the uninterrupted trajectory")
    ctx.log.warning("loop: %s", state.extra["resumed"])
    return state


def build(inputs: list[str], cfg: LoopSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    (parent,) = inputs
    key = keys[""]
    t0 = time.time()
    model, tok, ternary, packing = load_input(Path(ctx.store.get(parent)), ctx)
    distills = ternary and any(p.distill for p in cfg.phases)
    teacher, teacher_key = float_teacher(parent, ctx, ctx.log) if distills else (None, None)
    for p in model.parameters():
        p.requires_grad_(True)
    torch.manual_seed(cfg.seed)
    n = len(cfg.phases)
    tr = Trainer(model, tok, cfg, ctx.settings.eval, cfg.lr_bitnet if ternary else cfg.lr, ternary, teacher)
    sdir = state_dir(ctx, key)
    publish = publishes_phases(ctx, cfg)
    state = resume(ctx, key, cfg, tr, ternary)
    if state is None:
        metrics, score = validate(tr, ctx, cfg)
        state = LoopState(history=[{"phase": 0, "name": "input", "metrics": metrics, "score": score}])
    if not has_state(sdir):  # what a rollback of the next phase returns to
        save_state(sdir, state, model, tr.opt, tr.grokfast, tr.noise_gen)
    while state.phase < n:
        k = state.phase
        phase = cfg.phases[k]
        tr.progress = lambda f, m, _k=k: ctx.progress((_k + f) / n, f"loop: {m}")
        ctx.progress(k / n, f"loop: phase {k + 1}/{n} {phase.name}")
        t1 = time.time()
        row = run_phase(k, phase, tr, state)
        polyak = row.pop("polyak", None)
        if row.get("steps"):
            metrics, score = validate(tr, ctx, cfg)
        else:  # nothing trained (calibration, a dream that kept nothing): the weights are those last validated
            last = next(r for r in reversed(state.history) if "rolled_back" not in r)
            metrics, score = last["metrics"], last["score"]
        if polyak is not None:  # stabilisation: keep the better of the last and the averaged weights
            polyak.swap(tr.named)
            avg_metrics, avg_score = validate(tr, ctx, cfg)
            row["polyak"] = {"last": score, "average": avg_score, "kept": "average" if avg_score > score else "last"}
            if avg_score > score:
                metrics, score = avg_metrics, avg_score
            else:
                polyak.swap(tr.named)
        row.update(phase=k + 1, name=phase.name, kind=phase.kind, metrics=metrics, score=score,
                   wall_s=time.time() - t1, n_steps=len(row.get("steps", [])))
        verdict = judge(reference_row(state.history), metrics, score_weights(ctx, cfg, metrics), cfg.tolerance,
                        cfg.gate_z)
        row["gate"] = verdict.as_dict()
        if verdict.rolled_back:
            row["rolled_back"] = verdict.describe()
            ctx.log.warning("loop: phase %d (%s) rolled back: %s", k + 1, phase.name, row["rolled_back"])
            state = load_state(sdir, model, tr.opt, tr.grokfast, tr.noise_gen)
        state.history.append(row)
        state.phase = k + 1
        if state.phase < n or cfg.runtime.keep_state:  # else the output, published next, is all that is needed
            save_state(sdir, state, model, tr.opt, tr.grokfast, tr.noise_gen)
        if k + 1 < n and publish:  # after the last phase the output itself is published at once
            publish_phase(ctx, key, parent, k + 1, tr, ternary, packing, state)
        ctx.log.info("loop: phase %d %s: score %.4f%s", k + 1, phase.name, score,
                     " (rolled back)" if "rolled_back" in row else "")
    folder = ctx.work_dir / f"loop-{uuid.uuid4().hex}"
    info = save_output(model, tok, folder, ternary, packing)
    (folder / HISTORY_FILE).write_text(json.dumps(state.history, indent=1))
    plot_phases(state.history, folder / PLOT_FILE)
    info.update(input="ternary" if ternary else "float", teacher=teacher_key, phases=phase_table(state.history),
                rollbacks=[r["name"] for r in state.history if "rolled_back" in r], wall_s=time.time() - t0,
                **({"resumed": state.extra["resumed"]} if "resumed" in state.extra else {}))
    yield Built(variant="", folder=folder, parent=parent, info=info)
    # published: the resume points are no longer needed
    for k in range(1, n + 1):
        if ctx.store.exists(phase_key(key, k)):
            ctx.store.discard(phase_key(key, k))
    if not cfg.runtime.keep_state:
        shutil.rmtree(sdir.parent, ignore_errors=True)


def phase_table(history: list[dict]) -> list[dict]:
    """One row per phase: what the artifact table and the manifest show."""
    rows = []
    for r in history:
        sig = r.get("signals", {})
        rows.append({"phase": r["phase"], "name": r["name"], "steps": r.get("n_steps", 0),
                     "wall_s": round(r.get("wall_s", 0.0), 1), "score": round(r["score"], 4),
                     "loss_first": sig.get("loss_first"), "loss_last": sig.get("loss_last"),
                     **{m: r["metrics"].get(m) for m in ("perplexity", "arithmetic", "recall", "instruction")},
                     "signal": _signal(r), "rolled_back": "rolled_back" in r})
    return rows


def _signal(r: dict) -> str:
    s = r.get("signals", {})
    parts = []
    if "grokfast_amplification" in s:
        parts.append(f"grad-norm ratio {s['grokfast_amplification']:.2f}")
    if "curriculum" in r:
        parts.append(f"in band {r['curriculum']['share_in_band']:.2f}, level {r['curriculum']['level_end']}")
    if "d_star" in s:
        parts.append(f"d* {s['d_star']:.2f}")
    if "signal" in s:
        parts.append(f"stability {s['signal']:.3g}, eta {s.get('eta', 0):.2g}")
    if "dream" in r:
        parts.append(f"dream yield {r['dream']['yield']:.2f}")
    if "reflect" in r:
        parts.append(f"rescued {r['reflect']['rescued_share']:.2f}")
    if r.get("self_model"):
        sm = r["self_model"]
        parts.append(f"self-model mse {sm['self_mse_first']:.3g}->{sm['self_mse_last']:.3g}, "
                     f"confidence AUROC {sm['confidence_auroc']:.2f}")
    if "polyak" in r:
        parts.append(f"kept {r['polyak']['kept']}")
    return "; ".join(parts)


def artifacts(store: CheckpointStore, key: str) -> list[Artifact]:
    info = store.manifest(key).info
    return [Artifact("table", "loop-phases", info["phases"], f"The loop's phases (validation after each) for {key}")]


SPEC = StageSpec(
    name="loop",
    version=VERSION,
    takes="one",
    build=build,
    settings=LoopSettings,
    artifacts=artifacts,
    description="10-phase loop: base adaptation + Grokfast, calibration, curriculum/noise at the edge, dreaming, "
                "STaR reflection, self-modelling, Polyak stabilisation; each phase gated on validation.",
)
