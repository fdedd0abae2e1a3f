"""`target_bpw: auto` and the accuracy gates of the compression stage: the search returns the smallest
passing plan, a plan that breaks a task fails with the metric, the shortfall and the next larger target,
and nothing is published."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from agent_forge_core.compression.plan import Option, select_auto
from agent_forge_core.compression.settings import CompressionSettings
from agent_forge_core.config import load_settings
from agent_forge_core.compression.target_search import Probe, smallest_passing
from agent_forge_core.context import make_context
from agent_forge_core.errors import GateFailed
from agent_forge_core.evals.suite import greedy_complete
from agent_forge_core.evals.tasks import TASK_NAMES
from agent_forge_core.model_io import load_model, save_model
from agent_forge_core.stages.runner import run_stage_on


def _options(n_tensors: int = 12) -> dict[str, list[Option]]:
    """Tensors of different sizes and error profiles, 4 candidates each: many distinct Lagrangian plans."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for t in range(n_tensors):
        numel = int(torch.randint(50, 400, (1,), generator=g))
        errs = sorted(torch.rand(4, generator=g).tolist(), reverse=True)
        out[f"t{t}"] = [Option(j, numel * b, e, numel) for j, (b, e) in enumerate(zip((2, 3, 4, 8), errs))]
    return out


@pytest.mark.parametrize("threshold", [2.05, 3.3, 4.0, 5.5, 7.9])
def test_target_search_returns_the_smallest_passing_plan(threshold):
    options = _options()
    total = sum(o[0].numel for o in options.values())
    bpw = lambda sel: sum(o.bits for o in sel.values()) / total  # noqa: E731
    plan_at = lambda t: (lambda s: (s, bpw(s)))(select_auto(options, 0, total, t, 1.0))  # noqa: E731
    cheapest, best = plan_at(2.0)[1], plan_at(None)[1]
    # the known answer: every distinct plan on the Lagrangian frontier, by brute force over a fine grid
    frontier = sorted({plan_at(cheapest + i * (best - cheapest) / 4000)[1] for i in range(4001)})
    assert len(frontier) > 20
    judged = []

    def judge(plan, b):
        judged.append(b)
        return Probe(b, b >= threshold)  # quality monotone in size: passes from `threshold` up

    r = smallest_passing(plan_at, cheapest, judge, tolerance=1e-6, max_probes=64)
    assert bpw(r.plan) == min(b for b in frontier if b >= threshold)
    assert len(judged) == len(set(judged)) <= 2 + len(frontier).bit_length() + 1  # bisection, not a sweep
    assert [p.bpw for p in r.probes] == judged
    # nothing passes: no plan, the probe of the most accurate one says so
    none = smallest_passing(plan_at, cheapest, lambda p, b: Probe(b, False), 1e-6, 64)
    assert none.plan is None and [p.bpw for p in none.probes] == [best]


def test_default_gates_cover_task_accuracies_and_nlls():
    gates = CompressionSettings().gates
    for t in TASK_NAMES:
        assert gates[t] == 0.05 and f"{t}_nll" in gates
    assert CompressionSettings().target_bpw == 8.0  # quick: a fixed target (each search probe is a validation run)
    assert load_settings(profile="full").compression.target_bpw == "auto"
    with pytest.raises(ValueError, match="gates is empty"):
        CompressionSettings(gates={}, target_bpw="auto")


CANDIDATES = "compression.auto_candidates=" + yaml.safe_dump(
    [{"codec": "rtn", "params": {"bits": b, "group": 64}} for b in (2, 4, 8)], default_flow_style=True).strip()
RULES = "compression.rules=" + yaml.safe_dump(
    [{"pattern": "*_proj.weight", "codec": "auto"}, {"pattern": "*embed_tokens.weight", "codec": "rtn",
      "params": {"bits": 8, "group": 64}}, {"pattern": "*", "codec": "keep"}], default_flow_style=True).strip()


@pytest.fixture
def own_task(tiny_settings, tmp_path):
    """A tiny model whose answers depend on the prompt (its matrices scaled x4: the random tiny model answers
    every prompt alike), and a recall task whose answers are its own greedy answers: the input scores 1.0,
    and a plan that changes what the model answers breaks the task (RTN 2-bit keeps ~2 of 24 answers, 8-bit ~20)."""
    s = tiny_settings()
    model, tok = load_model(s.model.source)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    source = tmp_path / "sensitive"
    save_model(model, tok, source)
    prompts = [f"Records: k{i}={3 * i + 1}; q={i}. What is k{i}?" for i in range(24)]
    answers = greedy_complete(model, tok, [f"Q: {p}\nA:" for p in prompts], s.eval.max_new_tokens, 8)
    path = tmp_path / "own.jsonl"
    rows = [{"prompt": p, "answer": a.strip(), "target": a, "split": ("validation", "test")[i % 2]}
            for i, (p, a) in enumerate(zip(prompts, answers)) if a.strip()]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert len(rows) >= 16 and len({r["answer"] for r in rows}) > 3
    return [f"model.source={source}", f"eval.data={{recall: '{path}'}}", "eval.tasks=[recall]", "eval.shots=0",
            "eval.n_examples=12"]


def _run(tiny_settings, *extra):
    s = tiny_settings("cognate.enabled=false", "compression.enabled=true", "compression.calibration_tokens=0",
                      "compression.finetune.enabled=false", RULES, CANDIDATES, "compression.error_budget=10", *extra)
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    return ctx, base


def test_an_accuracy_gate_fails_a_plan_that_breaks_a_task_and_writes_nothing(tiny_settings, own_task):
    ctx, base = _run(tiny_settings, *own_task, "compression.target_bpw=4.3",
                     "compression.gates={recall: 0.05, perplexity: 1000}")
    assert ctx.store.manifest(base).metrics["recall"] == 1.0
    with pytest.raises(GateFailed) as e:
        run_stage_on("compression", [base], ctx)
    msg = str(e.value)
    assert "recall: " in msg and "short by" in msg and "perplexity" not in msg.split("\n", 1)[1]
    assert "set compression.target_bpw: " in msg  # the next larger plan, as a number
    nxt = float(msg.split("set compression.target_bpw: ")[1].split(" ")[0])
    assert nxt > 4.3
    assert [k for k in ctx.store.list() if k.startswith("compression-")] == []
    assert not any(ctx.work_dir.glob("compression-*"))  # the scratch folder is gone too


def test_target_bpw_auto_publishes_the_smallest_plan_that_passes_on_validation(tiny_settings, own_task):
    ctx, base = _run(tiny_settings, *own_task, "compression.gates={recall: 0.25, perplexity: 0.5}",
                     "compression.target_bpw=auto", "compression.search_tolerance=0.01", "compression.search_probes=12")
    r = run_stage_on("compression", [base], ctx)
    (key,) = r.outputs
    info = r.info[key]
    curve = info["curve"]
    chosen = [p for p in curve if p["bits_per_weight"] == round(info["chosen_bpw"], 4)]
    assert chosen and chosen[0]["passed"]
    assert info["bits_per_weight"] == pytest.approx(info["chosen_bpw"])
    assert all(not p["passed"] for p in curve if p["bits_per_weight"] < chosen[0]["bits_per_weight"])
    assert any(not p["passed"] for p in curve)  # the case is not trivial: some smaller plan failed
    folder = ctx.store.get(key)
    table = json.loads((folder / "rate_quality.json").read_text())
    assert table["plans"] == curve and (folder / "rate_quality.png").stat().st_size > 1000
    # the plans were judged on validation: the published metrics are the test split's
    assert "recall" in r.metrics[key]
    # the forge report shows the curve the search walked
    from agent_forge_core.report import collect, markdown

    report = markdown(collect(ctx.store, [key]), [key], ctx.store, "t")
    assert "compression: rate-quality curve walked by target_bpw auto (validation split)" in report
    assert report.count(" | True | ") == sum(p["passed"] for p in curve) and f"| {chosen[0]['bits_per_weight']:.4g} |" in report
