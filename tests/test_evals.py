import json
import math

import pytest
import torch

from agent_forge_core.evals.settings import EvalSettings
from agent_forge_core.evals.gates import check_gates, enforce_gates
from agent_forge_core.evals.suite import (answer_and_score, difference_noise, evaluate, greedy_complete, perplexity,
                                          standard_error, target_nll, target_nll_sum)
from agent_forge_core.evals.tasks import BUILTIN, SPLITS, Example, get_task, with_shots
from agent_forge_core.evals.text import natural_text
from agent_forge_core.errors import GateFailed
from agent_forge_core.model_io import load_model


@pytest.mark.parametrize("name", list(BUILTIN))
def test_no_family_is_in_two_splits_and_every_split_has_its_own(name):
    t = BUILTIN[name]
    owner = {}
    for f in t.families:
        assert owner.setdefault(f.name, f.split) == f.split
    for split in SPLITS:
        assert t.families_of(split), (name, split)
    drawn = {s: t.examples(s, 120, 0) for s in SPLITS}
    fams = {s: {e.family for e in exs} for s, exs in drawn.items()}
    assert fams["train"].isdisjoint(fams["validation"] | fams["test"]) and fams["validation"].isdisjoint(fams["test"])
    assert all(fams[s] == {f.name for f in t.families_of(s)} for s in SPLITS)  # every family is drawn
    prompts = {s: {e.prompt for e in exs} for s, exs in drawn.items()}
    assert all(len(v) == 120 for v in prompts.values())
    assert not (prompts["train"] & prompts["test"]) and not (prompts["train"] & prompts["validation"])
    assert not (prompts["validation"] & prompts["test"])
    assert [e.prompt for e in t.examples("test", 10, 0)] == [e.prompt for e in t.examples("test", 10, 0)]
    assert [e.prompt for e in t.examples("test", 10, 0)] != [e.prompt for e in t.examples("test", 10, 1)]


def near_misses(name: str, ex: Example) -> list[str]:
    """Completions a sloppy model might give: off by one, reformatted, truncated."""
    if name == "arithmetic":
        n = int(ex.answer)
        return [ex.target.replace(f"Answer: {n}", f"Answer: {n + 1}"), ex.target.rsplit(" Answer:", 1)[0],
                f" Answer: {n - 1}", f" The answer is {n}."]
    if name == "recall":
        n = int(ex.answer)
        return [f" {n + 1}", f" {n - 1}", " unknown", f" {str(n)[::-1]}" if str(n) != str(n)[::-1] else " 0"]
    out = ex.answer
    return [f" {out} ", f" {out}.", f" {out.lower()}" if out != out.lower() else f" {out},", f" {out[:-1]}",
            f" {out.replace(',', ', ')}" if "," in out else f" ({out})"]


@pytest.mark.parametrize("name", list(BUILTIN))
def test_each_checker_accepts_the_answer_in_every_family_and_rejects_near_misses(name):
    t = BUILTIN[name]
    for fam in t.families:
        import random

        rng = random.Random(f"check:{fam.name}")
        for _ in range(25):
            ex = fam.make(rng)
            assert t.check(ex.target, ex) and t.check(ex.target + "\nQ: junk", ex), (fam.name, ex)
            for miss in near_misses(name, ex):
                if miss.strip() != ex.answer:
                    assert not t.check(miss, ex), (fam.name, ex.prompt, miss)


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


def test_out_of_domain_text_is_found_offline_in_halves():
    from importlib import resources

    from agent_forge_core.evals.text import OOD_SOURCE, ood_text

    folder = resources.files("chatterbot_corpus") / "data" / "english"  # installed with the project
    assert (folder / "greetings.yml").is_file() and OOD_SOURCE["license"] == "BSD-3-Clause"
    val, test = ood_text("validation"), ood_text("test")
    assert len(val) > 25_000 and len(test) > 25_000
    assert set(val.split("\n\n")).isdisjoint(test.split("\n\n"))
    assert "def " not in test and "import " not in test  # the programming file is left out
    assert val[:500] not in natural_text("validation")
    with pytest.raises(ValueError, match="nothing to train on"):
        ood_text("train")


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


def _labels_loss(model, tok, p: str, t: str) -> tuple[float, int]:
    """(transformers' own mean loss over the target tokens of p + t, their count)."""
    n = len(tok(p, add_special_tokens=False).input_ids)
    full = tok(p + t, return_tensors="pt", add_special_tokens=False).input_ids
    labels = full.clone()
    labels[:, :n] = -100
    with torch.no_grad():
        return model(input_ids=full, labels=labels).loss.item(), full.shape[1] - n


def test_target_nll_matches_labels_loss(tiny):
    model, tok = tiny
    p, t = "Q: Records: cat=41. What is the value of cat?\nA:", " 41"
    ref, _ = _labels_loss(model, tok, p, t)
    assert target_nll(model, tok, [(p, t)], batch_size=4) == pytest.approx(ref, rel=1e-5)


def test_target_nll_of_a_ragged_batch_matches_each_pair_s_labels_loss_with_or_without_logits_to_keep(tiny):
    """target_nll projects only the positions from the shortest prompt on; a model that ignores logits_to_keep
    (a wrapper) must give the same number."""
    model, tok = tiny
    pairs = [("Q: 2 + 3 =\nA:", " 5"), ("Q: Records: cat=41, dog=7, emu=12. What is the value of emu?\nA:", " 12"),
             ("Say hi.\n", " hi there, friend")]
    losses = [_labels_loss(model, tok, p, t) for p, t in pairs]
    total, count = sum(loss * k for loss, k in losses), sum(k for _, k in losses)
    assert target_nll(model, tok, pairs, batch_size=4) == pytest.approx(total / count, rel=1e-5)

    class IgnoresKeep(torch.nn.Module):
        device = model.device

        def forward(self, input_ids, attention_mask=None, **_):
            return model(input_ids=input_ids, attention_mask=attention_mask)

    assert target_nll(IgnoresKeep(), tok, pairs, batch_size=4) == pytest.approx(total / count, rel=1e-5)


def test_answer_and_score_equals_separate_decoding_and_scoring(tiny):
    """The targets scored on the prefill's cache (ragged prompts and targets, a one-token target, a pair whose
    prompt merges with its target into other tokens, scored apart) give the separate passes' NLL, and decoding
    from the cropped cache the same completions."""
    model, tok = tiny
    pairs = [("Q: 2 + 3 =\nA:", " 5"), ("Q: Records: cat=41, dog=7, emu=12. What is the value of emu?\nA:", " 12"),
             ("Say hi.\n", " hi there, friend"), ("Q: 7 + 1 =\nA: ", "8"), ("Records: a=", "1")]
    ids = [(tok(p, add_special_tokens=False).input_ids, tok(p + t, add_special_tokens=False).input_ids) for p, t in pairs]
    assert [full[: len(p)] == p for p, full in ids] == [True, True, True, False, True]
    completions, total, count = answer_and_score(model, tok, pairs, max_new_tokens=6, batch_size=3)
    assert completions == greedy_complete(model, tok, [p for p, _ in pairs], 6, 3)
    ref_total, ref_count = target_nll_sum(model, tok, pairs, batch_size=3)
    assert count == ref_count and total == pytest.approx(ref_total, rel=1e-5)


def test_evaluate_reports_every_metric(tiny):
    model, tok = tiny
    cfg = EvalSettings(n_examples=4, ppl_tokens=256, ppl_window=64, max_new_tokens=4)
    m = evaluate(model, tok, cfg)
    tasks = ("arithmetic", "recall", "instruction")
    assert set(m) == {"perplexity", "perplexity_ood", *tasks, *(f"{t}_nll" for t in tasks), *(f"{t}_se" for t in tasks)}
    assert m["perplexity"] > 1 and m["perplexity_ood"] > 1 and all(0 <= m[t] <= 1 for t in tasks)
    assert all(m[f"{t}_se"] == pytest.approx(standard_error(round(m[t] * 4), 4)) for t in tasks)
    assert "perplexity_ood" not in evaluate(model, tok, cfg, split="train")  # no train half to score


def test_standard_error_is_agresti_coull_and_noise_decides_significance():
    assert standard_error(16, 32) == pytest.approx(math.sqrt(0.5 * 0.5 / 36))
    assert standard_error(0, 72) == pytest.approx(math.sqrt((2 / 76) * (74 / 76) / 76))  # never 0
    assert max(standard_error(k, 72) for k in range(73)) <= 0.06  # the quick profile's default n
    # 0.44 vs 0.50 on 72 examples each is within noise; 0.10 vs 0.50 is not
    a, b = standard_error(36, 72), standard_error(32, 72)
    assert difference_noise(a, b) > 0.06
    r = check_gates({"recall": 0.5, "recall_se": a}, {"recall": 32 / 72, "recall_se": b}, {"recall": 0.0})
    assert not r[0].passed and r[0].significant is False and "within the noise" in r[0].describe()
    r = check_gates({"recall": 0.5, "recall_se": a}, {"recall": 0.1, "recall_se": standard_error(7, 72)}, {"recall": 0.0})
    assert r[0].significant is True and "beyond the noise" in r[0].describe()


def test_noise_aware_gates_fail_only_a_shortfall_beyond_the_noise():
    # the first real chain's baking gate: recall 0.844 -> 0.688 on 32 examples, limit 0.1 (short by 0.056)
    before = {"recall": 27 / 32, "recall_se": standard_error(27, 32), "perplexity": 10.0}
    after = {"recall": 22 / 32, "recall_se": standard_error(22, 32), "perplexity": 12.5}
    gates = {"recall": 0.1, "perplexity": 0.2}
    strict = {r.metric: r for r in check_gates(before, after, gates)}
    aware = {r.metric: r for r in check_gates(before, after, gates, noise_aware=True)}
    assert not strict["recall"].passed and aware["recall"].passed
    assert aware["recall"].shortfall == pytest.approx(27 / 32 - 0.1 - 22 / 32)
    assert aware["recall"].shortfall < aware["recall"].noise
    assert "short by 0.05625 (within the noise" in aware["recall"].describe() and "passes" in aware["recall"].describe()
    assert not aware["perplexity"].passed  # perplexities have no standard error: the point estimates decide
    far = {"recall": 5 / 32, "recall_se": standard_error(5, 32)}
    (r,) = check_gates(before, far, {"recall": 0.1}, noise_aware=True)
    assert not r.passed and r.shortfall > r.noise  # a drop far past the limit still fails
    with pytest.raises(GateFailed, match="short by"):
        enforce_gates("baking", "baking-x", before, far, {"recall": 0.1}, noise_aware=True)


def test_gates_relative_for_perplexity_absolute_for_accuracy():
    before = {"perplexity": 10.0, "recall": 0.5}
    ok = check_gates(before, {"perplexity": 11.9, "recall": 0.41}, {"perplexity": 0.2, "recall": 0.1})
    assert all(r.passed for r in ok)
    with pytest.raises(GateFailed) as e:
        enforce_gates("cognate", "cognate-x", before, {"perplexity": 12.5, "recall": 0.3}, {"perplexity": 0.2, "recall": 0.1})
    msg = str(e.value)
    assert "perplexity: 12.5, allowed at most 12" in msg and "recall: 0.3, allowed at least 0.4" in msg
    assert "no checkpoint was written" in msg
