"""Stage 7, expert vectors: Transformer² SVF experts per domain and the dispatcher of its two-pass inference.

Build: decompose the input's target matrices (`svf.py`), train one expert per domain (`train.py`), measure
every expert on every domain (the expert x task matrix, off in quick), fit and measure the dispatchers (`dispatch.py`; CEM
mixes with `cem.py`), and write the base weights unchanged with the experts as sidecars (`expert.py`).
The runner evaluates the output through its two-pass runtime (`two_pass.py`): each prompt answered with the
expert its dispatcher picks. A BitNet input is composed on its dequantized weights (the output is float) or
refused (`ternary_input`).

With `search.enabled`, an ADAS-style search over agent designs (`search.py`, `designs.py`) picks the design on
validation that chat and serve load (`agent_design.json`); its archive is `adas_archive.json`. Design
evaluations fan out like EvoMerge's candidates (`job.py`; `experts.runtime`).
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Iterator

import torch

from ..errors import ConfigError
from ..fanout import fanout_map
from ..evals.suite import greedy_complete, perplexity, target_nll
from ..evals.text import natural_text
from ..formats import bitnet as bitnet_format
from ..formats.files import add_sidecars
from ..model_io import load_model, save_model
from ..stages.contract import Built, StageContext, StageSpec
from ..store import Manifest
from .cem import cem
from .designs import Design
from .dispatch import (OTHER_LABEL, LinearProbe, dispatch_accuracy, linear_router, pooled_features, prompt_router,
                       train_classifier)
from .domains import Domain, get_domain, other_texts
from .expert import EXPERTS_DIR, Expert, mix
from .job import DESIGN_JOB
from .plot import plot_search
from .settings import CEM_REFERENCE, REFERENCE, ExpertsSettings
from .search import run_search
from .svf import SVF
from .train import train_expert
from .two_pass import ARCHIVE_FILE, DESIGN_FILE, DISPATCHER_FILE, EXPERTS_FILE, TwoPass

VERSION = 3  # 2: the `other` class, the stop-token fix in REINFORCE; 3: evaluated by the runner (routed NLLs and tools)
CLS_FILE = "experts/_dispatch.safetensors"
SEARCH_PLOT = "adas_search.png"


def domain_score(model, tok, domain: Domain, split: str, n: int, ev) -> float:
    """Accuracy on `n` examples of the split (a task domain), or perplexity of the split's text (language)."""
    if not domain.checkable:
        return perplexity(model, tok, natural_text(split), ev.ppl_tokens, ev.ppl_window)
    items = domain.examples(split, n, ev.shots, ev.seed)
    outs = greedy_complete(model, tok, [p for p, _ in items], ev.max_new_tokens, ev.batch_size)
    return sum(domain.task.check(c, ex) for c, (_, ex) in zip(outs, items)) / len(items)


def expert_matrix(model, tok, svf: SVF, experts: dict[str, Expert], domains: list[Domain], n: int, ev,
                  progress) -> dict[str, dict[str, float]]:
    """{row: {domain: score}} for the base and each expert, on the test split."""
    rows = {"base": None, **{d: e.z for d, e in experts.items()}}
    out = {}
    for i, (row, z) in enumerate(rows.items()):
        progress(i / len(rows), f"matrix: {row}")
        svf.apply(z)
        out[row] = {d.name: domain_score(model, tok, d, "test", n, ev) for d in domains}
    svf.apply(None)
    return out


def cem_mixes(model, tok, svf: SVF, experts: dict[str, Expert], domains: list[Domain], cfg: ExpertsSettings, ev,
              progress) -> dict[str, dict]:
    """Per task domain, α searched on `cem.shots` train examples; fitness (accuracy, log-likelihood of the gold
    outputs); then its test accuracy on `matrix_examples` (none when the matrix is off)."""
    ordered = list(experts.values())
    out = {}
    tasks = [d for d in domains if d.checkable]
    for k, d in enumerate(tasks):
        shots = d.examples("train", cfg.cem.shots, ev.shots, cfg.seed + 977)

        def fitness(alpha, _shots=shots, _d=d):
            svf.apply(mix(ordered, alpha))
            outs = greedy_complete(model, tok, [p for p, _ in _shots], ev.max_new_tokens, ev.batch_size)
            acc = sum(_d.task.check(c, ex) for c, (_, ex) in zip(outs, _shots)) / len(_shots)
            return acc, -target_nll(model, tok, [(p, ex.target) for p, ex in _shots], ev.batch_size)

        progress(k / len(tasks), f"cem: {d.name}")
        alpha, score, history = cem(fitness, len(ordered), cfg.cem.population, cfg.cem.elite_ratio,
                                    cfg.cem.generations, cfg.cem.init_std, cfg.seed + k)
        svf.apply(mix(ordered, alpha))
        test = domain_score(model, tok, d, "test", cfg.matrix_examples, ev) if cfg.matrix_examples else None
        out[d.name] = {"alpha": alpha, "shots_accuracy": score[0], "shots_loglik": score[1], "test": test,
                       "history": history}
    svf.apply(None)
    return out


def design_search(folder: Path, parent: str, run_id: str, modes: list[str], n_experts: int, cfg: ExpertsSettings,
                  ctx: StageContext) -> dict:
    """The search over the built folder, its designs scored through the stage's fan-out; writes
    `adas_archive.json` and `agent_design.json` into the folder."""
    from ..quietstar.state import has_thoughts

    ev = ctx.settings.eval
    tasks = [d for d in cfg.domains if d != "language" and d in ev.tasks] or list(ev.tasks)
    # the jobs read the built folder from the store (another machine may run them); gone again after the search
    internal = f"{run_id}-search"
    ctx.store.put(internal, folder, Manifest(key=internal, stage="experts", parents=[parent], config_hash="",
                                             code_version=f"experts.v{VERSION}", info={"internal": "design search"}))
    pool = ctx.fanout(DESIGN_JOB, cfg.runtime)

    def score(designs: list[Design], split: str) -> list[dict]:
        requests = [{"id": hashlib.sha256(json.dumps(d.as_dict(), sort_keys=True).encode()).hexdigest()[:16],
                     "run_id": run_id, "checkpoint": internal, "design": d.as_dict(), "split": split, "tasks": tasks,
                     "examples": cfg.search.examples, "seed": cfg.seed, "label": f"design-{split}"} for d in designs]
        results = {r["id"]: res for r, res in fanout_map(pool, requests)}
        return [results[r["id"]] for r in requests]

    try:
        result = run_search(score, modes, n_experts, has_thoughts(folder), cfg.search.designs, cfg.search.test_top,
                            cfg.seed, cfg.search.tournament, batch=pool.slots,
                            log=lambda m: ctx.progress(0.95, f"experts: {m}"))
    finally:
        pool.close()
    ctx.store.discard(internal)
    (folder / ARCHIVE_FILE).write_text(json.dumps({**result, "tasks": tasks, "examples": cfg.search.examples}, indent=1))
    (folder / DESIGN_FILE).write_text(json.dumps(result["chosen"]["design"], indent=1))
    plot_search(result["archive"], folder / SEARCH_PLOT)
    add_sidecars(folder, [ARCHIVE_FILE, DESIGN_FILE, SEARCH_PLOT])
    return {"chosen": result["chosen"]["label"], "validation": result["chosen"]["validation"],
            "test": result["chosen"].get("test"), "ranked": result["ranked"],
            "top": [{k: r[k] for k in ("label", "validation", "test") if k in r} for r in
                    sorted(result["archive"], key=lambda r: result["ranked"].index(r["label"]))[:cfg.search.test_top]]}


def trained_expert(ctx: StageContext, run_id: str, folder: Path, svf: SVF, domain: str, train) -> tuple[Expert, list]:
    """The expert of `domain` as stored in `folder` (z in float16, what the matrix and dispatch then read): trained
    by `train()`, or taken from the store where an interrupted run of this stage kept it (each expert is kept there
    as soon as it is trained, so a resumed run trains only the missing ones)."""
    rel = f"{EXPERTS_DIR}/{domain}.safetensors"
    kept = f"experts/{run_id}/trained/{domain}"
    raw, hist = ctx.store.read_file(f"{kept}.safetensors"), ctx.store.read_file(f"{kept}.json")
    if raw is not None and hist is not None:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(raw)
        expert = Expert.load(folder / rel)
        expert.verify(svf)
        ctx.log.info("experts: %s taken from an earlier run of this stage", domain)
        return expert, json.loads(hist)
    expert, history = train()
    expert.save(folder, svf)
    ctx.store.write_file(f"{kept}.safetensors", (folder / rel).read_bytes())
    ctx.store.write_file(f"{kept}.json", json.dumps(history).encode())
    return Expert.load(folder / rel), history


def _load_input(folder: Path, cfg: ExpertsSettings, ctx: StageContext):
    if not bitnet_format.detect(folder):
        return (*load_model(str(folder), device=str(ctx.device)), None)
    if cfg.ternary_input == "refuse":
        raise ConfigError(f"experts: the input {folder.name} is a BitNet (ternary) checkpoint and "
                          "experts.ternary_input=refuse; set experts.ternary_input=compose to compose experts on its "
                          "dequantized weights (the output is then float), or turn bitnet off")
    plain = bitnet_format.export_hf(folder, ctx.work_dir / f"experts-dequant-{uuid.uuid4().hex}")
    return (*load_model(str(plain), device=str(ctx.device)), "composed on the dequantized ternary weights; the "
            "output is float (compression re-encodes it)")


def build(inputs: list[str], cfg: ExpertsSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    (parent,) = inputs
    t0 = time.time()
    model, tok, ternary_note = _load_input(Path(ctx.store.get(parent)), cfg, ctx)
    ev = ctx.settings.eval
    svf = SVF(model, cfg.train.target)
    domains = [get_domain(d, ev.data) for d in cfg.domains]
    folder = save_model(model, tok, ctx.work_dir / f"experts-{uuid.uuid4().hex}")  # the base weights, unchanged
    experts: dict[str, Expert] = {}
    histories: dict[str, list[dict]] = {}
    n = len(domains) + 2
    for k, d in enumerate(domains):
        experts[d.name], histories[d.name] = trained_expert(
            ctx, keys[""], folder, svf, d.name, lambda _d=d, _k=k: train_expert(
                model, tok, svf, _d, cfg.train, ev.shots, cfg.seed + _k,
                progress=lambda f, m: ctx.progress(0.6 * (_k + f) / n, f"experts: {m}")))
    timings = {"train_s": time.time() - t0}
    files = {d: f"{EXPERTS_DIR}/{d}.safetensors" for d in experts}

    matrix = None
    if cfg.matrix_examples:
        t1 = time.time()
        matrix = expert_matrix(model, tok, svf, experts, domains, cfg.matrix_examples, ev,
                               lambda f, m: ctx.progress(0.6 + 0.2 * f, f"experts: {m}"))
        timings["matrix_s"] = time.time() - t1

    t1 = time.time()
    names = [d.name for d in domains]
    train_q = {d.name: d.queries("train", cfg.dispatch_train, ev.shots, cfg.seed) for d in domains}
    test_q, others = dispatch_test_queries(names, cfg, ev)
    ctx.progress(0.8, "experts: dispatchers")
    dispatcher: dict = {"mode": cfg.dispatch, "domains": names, "accuracy": {}}
    if "linear" in (cfg.dispatch, *cfg.dispatch_compare):
        labels = torch.tensor([i for i, d in enumerate(names) for _ in train_q[d]])
        probe = LinearProbe.fit(pooled_features(model, tok, [q for d in names for q in train_q[d]]), labels, len(names),
                                margin=cfg.other_margin or None)
        dispatcher["linear"] = probe.as_dict()
        dispatcher["accuracy"]["linear"] = dispatch_accuracy(linear_router(model, tok, names, probe), test_q, others)
    if "prompt" in (cfg.dispatch, *cfg.dispatch_compare):
        dispatcher["accuracy"]["prompt"] = dispatch_accuracy(prompt_router(model, tok, names), test_q, others)
    info: dict = {}
    if cfg.dispatch == "cls_expert":
        cls, hist = train_classifier(model, tok, svf, domains, cfg, ev.shots, cfg.seed + 101,
                                     progress=lambda f, m: ctx.progress(0.85, f"experts: cls {m}"))
        cls = Expert.load(folder / cls.save(folder, svf))
        files_cls = [CLS_FILE]
        dispatcher["cls_expert"] = CLS_FILE
        dispatcher["accuracy"]["cls_expert"] = dispatch_accuracy(prompt_router(model, tok, names, svf, cls.z), test_q,
                                                                 others)
        info["cls_expert"] = {"meta": cls.meta, "history": hist}
    else:
        files_cls = []
    if cfg.dispatch == "cem":
        mixes = cem_mixes(model, tok, svf, experts, domains, cfg, ev, lambda f, m: ctx.progress(0.9, f"experts: {m}"))
        dispatcher["cem"] = {d: r["alpha"] for d, r in mixes.items()}
        info["cem"] = mixes
    timings["dispatch_s"] = time.time() - t1

    (folder / EXPERTS_FILE).write_text(json.dumps({
        "version": VERSION, "target": svf.target, "domains": names, "files": files, "values_per_expert": svf.n_values,
        "svd": "torch.linalg.svd float32, thin; z indexed by descending singular values",
        "objectives": {d: e.meta.get("objective") for d, e in experts.items()}}, indent=2))
    (folder / DISPATCHER_FILE).write_text(json.dumps(dispatcher))
    add_sidecars(folder, [*files.values(), *files_cls, EXPERTS_FILE, DISPATCHER_FILE])
    if cfg.search.enabled:
        t1 = time.time()
        modes = (["linear"] if "linear" in dispatcher else []) + ["prompt"] + (["cls_expert"] if "cls_expert" in dispatcher else []) + \
            (["cem"] if "cem" in dispatcher else [])
        info["search"] = design_search(folder, parent, keys[""], modes, len(experts), cfg, ctx)
        timings["search_s"] = time.time() - t1
    info.update({
        "values_per_expert": svf.n_values, "target": svf.target, "matrix": matrix,
        "matrix_examples": cfg.matrix_examples,
        "experts": {d: {**e.meta, "history": histories[d]} for d, e in experts.items()},
        "dispatch_accuracy": dispatcher["accuracy"], "dispatch": cfg.dispatch, "timings": timings,
        "agent": dispatch_capabilities(cfg.dispatch, dispatcher["accuracy"].get(cfg.dispatch, {})),
        "departures": {**cfg.train.departures(REFERENCE), **cfg.cem.departures(CEM_REFERENCE)},
    })
    acc = dispatcher["accuracy"]
    info["tables"] = {"dispatch accuracy per mode (test prompts per domain; other: share of text of no domain left "
                      "on the base weights)": {"columns": ["mode", *next(iter(acc.values()), {})],
                                               "rows": [{"mode": m, **a} for m, a in acc.items()]}}
    if matrix:
        info["tables"]["expert x task on the test split (row: the weights, base or one domain's expert)"] = {
            "columns": ["weights", *names], "rows": [{"weights": row, **scores} for row, scores in matrix.items()]}
    if ternary_note:
        info["ternary_input"] = ternary_note
    ctx.log.info("experts: %d experts x %d values (%s); dispatch accuracy %s", len(experts), svf.n_values,
                 svf.target, {m: round(a["all"], 3) for m, a in dispatcher["accuracy"].items()})
    yield Built(variant="", folder=folder, parent=parent, info=info, model=model, tokenizer=tok)


def dispatch_test_queries(domains: list[str], cfg: ExpertsSettings, ev) -> tuple[dict[str, list[str]], list[str]]:
    """What dispatch accuracy is measured on: test queries per domain, and text of no domain."""
    queries = {d: get_domain(d, ev.data).queries("test", cfg.dispatch_examples, ev.shots, cfg.seed) for d in domains}
    return queries, other_texts(cfg.dispatch_examples, seed=cfg.seed)


def dispatch_capabilities(mode: str, accuracy: dict[str, float]) -> dict[str, float]:
    return {f"dispatch ({mode}) {k}": v for k, v in accuracy.items() if k in ("all", OTHER_LABEL)}


def agent_probe(model, tok, folder, settings, scratch) -> dict[str, float]:
    """The checkpoint's own dispatcher on the stage's test queries (and text of no domain), on its weights now."""
    cfg = settings.experts
    two_pass = TwoPass(model, tok, folder)
    if two_pass.mode not in ("linear", "prompt", "cls_expert"):  # cem and static pick no expert per prompt
        return {}
    acc = dispatch_accuracy(two_pass.route, *dispatch_test_queries(two_pass.domains, cfg, settings.eval))
    return dispatch_capabilities(two_pass.mode, acc)


SPEC = StageSpec(
    name="experts",
    version=VERSION,
    takes="one",
    build=build,
    settings=ExpertsSettings,
    agent_probe=agent_probe,
    jobs=(DESIGN_JOB,),
    description="Transformer² SVF experts per domain, dispatched per prompt (two-pass inference).",
)
