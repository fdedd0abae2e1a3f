import json
import math

import pytest
import torch

from agent_forge_core.config import EvalSettings
from agent_forge_core.evals.gates import check_gates, enforce_gates
from agent_forge_core.evals.suite import evaluate, greedy_complete, perplexity, target_nll
from agent_forge_core.evals.tasks import BUILTIN, SPLITS, Example, get_task, with_shots
from agent_forge_core.evals.text import natural_text
from agent_forge_core.errors import GateFailed
from agent_forge_core.model_io import load_model


@pytest.mark.parametrize("name", list(BUILTIN))
def test_splits_are_disjoint_deterministic_and_checkable(name):
    t = BUILTIN[name]
    sets = {s: {e.prompt for e in t.examples(s, 60, 0)} for s in SPLITS}
    assert all(len(v) == 60 for v in sets.values())
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["validation"])
    assert not (sets["validation"] & sets["test"])
    assert [e.prompt for e in t.examples("test", 10, 0)] == [e.prompt for e in t.examples("test", 10, 0)]
    assert [e.prompt for e in t.examples("test", 10, 0)] != [e.prompt for e in t.examples("test", 10, 1)]
    for ex in t.examples("test", 30, 0):
        assert t.check(ex.target, ex)
        assert t.check(ex.target + "\nQ: junk", ex)
        assert not t.check(" nothing useful", ex)


def test_arithmetic_targets_are_correct_arithmetic():
    for ex in BUILTIN["arithmetic"].examples("train", 100, 3):
        steps = [s for s in ex.target.split(".") if "=" in s]
        for s in steps:
            lhs, rhs = s.split("=")
            assert eval(lhs) == int(rhs)  # noqa: S307 - our own generated digits and + - *
        assert ex.target.endswith(f"Answer: {ex.answer}")


def test_text_splits_are_disjoint():
    tr, te = natural_text("train"), natural_text("test")
    assert len(tr) > 300_000 and len(te) > 20_000
    assert te[:2000] not in tr


def test_bring_your_own_jsonl(tmp_path):
    p = tmp_path / "mine.jsonl"
    rows = [{"prompt": f"Say {i}", "answer": str(i), "split": "test" if i % 2 else "train"} for i in range(10)]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    t = get_task("instruction", {"instruction": str(p)})
    got = t.examples("test", 100)
    assert [e.answer for e in got] == ["1", "3", "5", "7", "9"]
    assert t.check(" 3\n", Example("Say 3", " 3", "3")) and not t.check(" 4", Example("Say 3", " 3", "3"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: each line must be a JSON object with 'prompt' and 'answer'"):
        get_task("recall", {"recall": str(bad)}).examples("test", 1)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_greedy_complete_matches_transformers_generate(tiny):
    model, tok = tiny
    prompts = [p for p, _ in with_shots(BUILTIN["recall"], "test", 5, 1, 0)]
    ours = greedy_complete(model, tok, prompts, max_new_tokens=6, batch_size=3)
    for p, o in zip(prompts, ours):
        ids = tok(p, return_tensors="pt", add_special_tokens=False).input_ids
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
        cut = text.index("\n") + 1 if "\n" in text else len(text)
        assert o == text[:cut]


def test_perplexity_matches_direct_computation(tiny):
    model, tok = tiny
    text = natural_text("test")
    ids = tok(text, add_special_tokens=False).input_ids[:128]
    with torch.no_grad():
        x = torch.tensor(ids).view(2, 64)
        loss = model(input_ids=x, labels=x).loss.item()
    assert perplexity(model, tok, text, 128, 64) == pytest.approx(math.exp(loss), rel=1e-5)


def test_target_nll_matches_labels_loss(tiny):
    model, tok = tiny
    p, t = "Q: Records: cat=41. What is the value of cat?\nA:", " 41"
    n = len(tok(p, add_special_tokens=False).input_ids)
    full = tok(p + t, return_tensors="pt", add_special_tokens=False).input_ids
    labels = full.clone()
    labels[:, :n] = -100
    with torch.no_grad():
        ref = model(input_ids=full, labels=labels).loss.item()
    assert target_nll(model, tok, [(p, t)], batch_size=4) == pytest.approx(ref, rel=1e-5)


def test_evaluate_reports_every_metric(tiny):
    model, tok = tiny
    cfg = EvalSettings(n_examples=4, ppl_tokens=256, ppl_window=64, max_new_tokens=4)
    m = evaluate(model, tok, cfg)
    assert set(m) == {"perplexity", "arithmetic", "arithmetic_nll", "recall", "recall_nll", "instruction", "instruction_nll"}
    assert m["perplexity"] > 1 and all(0 <= m[t] <= 1 for t in ("arithmetic", "recall", "instruction"))


def test_gates_relative_for_perplexity_absolute_for_accuracy():
    before = {"perplexity": 10.0, "recall": 0.5}
    ok = check_gates(before, {"perplexity": 11.9, "recall": 0.41}, {"perplexity": 0.2, "recall": 0.1})
    assert all(r.passed for r in ok)
    with pytest.raises(GateFailed) as e:
        enforce_gates("cognate", "cognate-x", before, {"perplexity": 12.5, "recall": 0.3}, {"perplexity": 0.2, "recall": 0.1})
    msg = str(e.value)
    assert "perplexity: 12.5, allowed at most 12" in msg and "recall: 0.3, allowed at least 0.4" in msg
    assert "no checkpoint was written" in msg
