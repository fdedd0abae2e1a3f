"""The agent runtime on the tiny model: the calculator's refusals, markup, memory across restarts and
sessions, retrieval (BM25, dense, fusion, hypergraph, save/load), and the tool loop with and without cache."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from agent_forge_core.agent.calculator import CalculatorError, calculate
from agent_forge_core.agent.markup import find_call, strip_markup, wrap
from agent_forge_core.agent.memory import Memory


@pytest.mark.parametrize("expr, value", [("17*3", "51"), ("(3+4)*5-1", "34"), ("7/2", "3.5"), ("10//3", "3"),
                                         ("-5+2", "-3"), ("2**10", "1024"), ("2**-2", "0.25"), ("1e3+1", "1001"),
                                         ("12 + 7", "19"), ("3×4", "12")])
def test_calculator_computes(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr, why", [
    ("__import__('os').system('echo hi')", "not Call"), ("a+1", "not Name"), ("(1).real", "not Attribute"),
    ("[1][0]", "not Subscript"), ("'x'*3", "not Constant"), ("9**9**9", "too large"), ("10**400", "too large"),
    ("1" * 201, "longer than 200"), ("1/0", "division by zero"), ("lambda: 1", "not Lambda"), ("", "empty"),
    ("1 +", "not an arithmetic expression"), ("[x for x in range(10**9)]", "not ListComp"),
])
def test_calculator_refuses(expr, why):
    with pytest.raises(CalculatorError, match=why):
        calculate(expr)


def test_markup_calls_results_and_what_a_checker_sees():
    text = " <calc>17*3</calc><result>51</result> Answer: 51"
    call = find_call(text, {"calc"})
    assert (call.tool, call.args) == ("calc", "17*3") and text[call.start:call.end] == "<calc>17*3</calc>"
    assert find_call("<result>1</result><calc>2+", {"calc"}) is None  # incomplete; a result is no call
    assert find_call("<unknown>x</unknown>", {"calc"}) is None
    assert strip_markup(text) == "51 Answer: 51"
    assert wrap("result", "a <b>\nc") == "<result>a ‹b› c</result>"  # a result cannot open a tag or a line


def test_memory_survives_restarts_and_sessions_are_isolated(tmp_path):
    db = tmp_path / "m.sqlite"
    a = Memory(db, "agent", "s1")
    assert a.tool_write("cat = 41") == "stored" and a.tool_read("cat") == "41"
    assert Memory(db, "agent", "s1").tool_read("cat") == "41"  # a new context (or process) of the session
    assert Memory(db, "agent", "s2").tool_read("cat") == "not found"  # another session sees nothing
    assert Memory(db, "other", "s1").tool_read("cat") == "not found"  # nor another agent
    assert a.tool_write("no equals sign").startswith("error")
    a.log("e1", "user", "hello")
    assert Memory(db, "agent", "s1").episode("e1") == [("user", "hello")]


def test_retrieval_finds_the_topic_and_round_trips(tmp_path, tiny_model_dir):
    from agent_forge_core.agent.retrieval.corpus import folder_passages, load_corpus
    from agent_forge_core.agent.retrieval.fusion import rrf
    from agent_forge_core.agent.retrieval.index import RetrievalIndex
    from agent_forge_core.model_io import load_model

    assert rrf([[3, 1, 2], [1, 3]]) == [1, 3, 2] and rrf([[5], [6]]) == [5, 6]
    passages = load_corpus("pydoc")
    index = RetrievalIndex.build(passages, "pydoc")
    hits = index.search("context manager __enter__ __exit__ with statement", k=3)
    assert {p.source for p in hits} & {"with", "compound", "context-managers"}
    index.save(tmp_path / "idx")
    again = RetrievalIndex.load(tmp_path / "idx")
    assert [p.id for p in again.search("yield expression generator", 3)] == [p.id for p in index.search("yield expression generator", 3)]
    # a hit's hypergraph neighbours share identifiers with it
    top = index.search("__enter__", k=1, neighbours=2)
    assert len(top) == 3 and all("__enter__" in p.text or "__exit__" in p.text or "with" in p.text for p in top[1:])
    # a folder of the user's documents, and the dense option with the model's own embeddings
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The capybara is the largest living rodent.\n\nIt lives in South America.")
    (docs / "b.txt").write_text("Rust is a systems programming language with ownership and borrowing.")
    model, tok = load_model(str(tiny_model_dir))
    dense = RetrievalIndex.build(folder_passages(docs), str(docs), (model, tok), "import-x")
    assert dense.dense.shape == (2, 64) and dense.search("largest rodent capybara", 1)[0].source == "a.md"
    dense.save(tmp_path / "dense")
    loaded = RetrievalIndex.load(tmp_path / "dense")
    assert loaded.meta["dense_model"] == "import-x" and loaded.dense.shape == (2, 64)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from agent_forge_core.model_io import load_model

    return load_model(str(tiny_model_dir))


def test_a_call_pauses_generation_and_the_result_goes_back_in_with_or_without_cache(tiny):
    from agent_forge_core.agent.generate import generate
    from agent_forge_core.agent.tools import calculator_tool

    model, tok = tiny
    tools = {"calc": calculator_tool()}
    a = generate(model, tok, "Q: What is 17 times 3?\nA:", tools, prefix=" <calc>17*3</calc>", max_new_tokens=12,
                 stop_at_newline=False)
    b = generate(model, tok, "Q: What is 17 times 3?\nA:", tools, prefix=" <calc>17*3</calc>", max_new_tokens=12,
                 stop_at_newline=False, use_cache=False)
    assert a.text.startswith(" <calc>17*3</calc><result>51</result>") and [r for _, r in a.calls] == ["51"]
    assert a.text == b.text and a.model_tokens == b.model_tokens == 12  # the cache is an optimisation only
    # the cap, a client's tool that pauses, and events in order
    events = []
    capped = generate(model, tok, "Q: x\nA:", tools, prefix=" <calc>2+2</calc>", max_calls=0, max_new_tokens=2,
                      on_event=events.append)
    assert [r for _, r in capped.calls] == ["error: call limit reached"]
    assert [e.kind for e in events][:2] == ["call", "result"]
    history = generate(model, tok, "Q: x\nA:", tools, prefix=" <calc>1+1</calc><result>2</result> so", max_new_tokens=2)
    assert history.calls == [] and history.text.startswith(" <calc>1+1</calc><result>2</result> so")  # not run again
    paused = generate(model, tok, "Q: weather?\nA:", tools, prefix=" <weather>Paris</weather>", pause_on={"weather"})
    assert paused.finish == "tool_calls" and (paused.pending.tool, paused.pending.args) == ("weather", "Paris")


def test_batched_answers_equal_the_tool_loop_calls_included(tiny):
    import agent_forge_core.agent.generate as g
    from agent_forge_core.agent.tools import calculator_tool

    model, tok = tiny
    tools = {"calc": calculator_tool()}
    prompts = [f"Q: What is {a} plus {b}?\nA:" for a, b in ((3, 4), (12, 9), (7, 70), (1, 2), (40, 2))]
    batched = g.generate_batch(model, tok, prompts, tools, max_new_tokens=8, batch_size=3)
    assert [b.text for b in batched] == [g.generate(model, tok, p, tools, max_new_tokens=8).text for p in prompts]
    # calls in some rows and not others, results of different lengths, the call cap: each row as `generate`
    prefixes = [" <calc>17*3</calc>", "", " <calc>2**40</calc>", " <calc>1+1</calc><result>2</result> so", " <calc>9-1</calc>"]
    kw = dict(max_new_tokens=10, stop_at_newline=False)
    # and with a common instruction head, whose cache the batch computes once and shares
    head = "Answer in one line. For arithmetic write a call such as <calc>2+2</calc> and wait for its result.\n\n"
    assert len(os.path.commonprefix([tok(head + p).input_ids for p in prompts])) >= g.SHARED_MIN
    for texts in (prompts, [head + p for p in prompts]):
        seen = []
        out = g.generate_batch(model, tok, texts, tools, prefixes=prefixes, batch_size=4, before_call=seen.append,
                               max_calls=1, **kw)
        ref = [g.generate(model, tok, p, tools, prefix=x, max_calls=1, **kw) for p, x in zip(texts, prefixes)]
        assert [o.text for o in out] == [r.text for r in ref] and [o.calls for o in out] == [r.calls for r in ref]
        assert [(o.ids, o.written) for o in out] == [(r.ids, r.written) for r in ref]  # what each model read
        assert seen == [0, 2, 4] and out[0].text.startswith(" <calc>17*3</calc><result>51</result>")
        assert [o.model_tokens for o in out] == [10] * 5 and out[3].calls == []  # history is not run again
    # sampled: reproducible per seed, and a different seed draws differently
    hot = dict(max_new_tokens=8, temperature=1.0, batch_size=5)
    a, b = (g.generate_batch(model, tok, prompts, tools, seed=s, **hot) for s in (1, 1))
    assert [x.text for x in a] == [x.text for x in b] != [x.text for x in g.generate_batch(model, tok, prompts, tools, seed=2, **hot)]


def test_runtime_from_a_checkpoint_and_the_eval_hook(tiny, tiny_model_dir, tmp_path):
    from agent_forge_core.agent.runtime import Runtime
    from agent_forge_core.agent.settings import AgentSettings
    from agent_forge_core.errors import ConfigError
    from agent_forge_core.evals.settings import EvalSettings
    from agent_forge_core.evals.suite import evaluate

    model, tok = tiny
    settings = AgentSettings(memory=str(tmp_path / "m.sqlite"), index_dir=str(tmp_path / "idx"))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "runtime.json").write_text(json.dumps({"tools": ["calc", "mem_read", "mem_write"], "max_calls": 2}))
    rt = Runtime.open(folder, model, tok, settings)
    assert sorted(rt.tools) == ["calc", "mem_read", "mem_write"] and rt.spec.max_calls == 2
    assert "<calc>17*3</calc><result>51</result>" in rt.prompt("What is 17*3?")
    (folder / "runtime.json").write_text(json.dumps({"tools": ["calc", "os:system"]}))
    with pytest.raises(ConfigError, match="neither built in"):  # a checkpoint cannot make us import code
        Runtime.open(folder, model, tok, settings)
    local = AgentSettings(memory=str(tmp_path / "m.sqlite"), tools=["json:dumps"])  # this machine's own choice
    assert "dumps" in Runtime.open(None, model, tok, local).tools
    cfg = EvalSettings(n_examples=2, ppl_tokens=128, ppl_window=64, max_new_tokens=6, tasks=["arithmetic"])
    m = evaluate(model, tok, cfg, complete=rt.completer(6))
    assert set(m) >= {"arithmetic", "arithmetic_se", "perplexity"}


def test_a_checkpoint_with_a_runtime_is_evaluated_with_its_tools(tiny_settings, monkeypatch, tmp_path):
    """The runner evaluates a built checkpoint that carries runtime.json through its tool loop."""
    import agent_forge_core.importer.stage as importer
    import agent_forge_core.stages.evaluation as evaluation  # how the runner evaluates a built model
    from agent_forge_core.context import make_context
    from agent_forge_core.stages.runner import run_stage_on

    real_save, seen = importer.save_model, {}

    def save_with_runtime(model, tok, folder):
        out = real_save(model, tok, folder)
        (out / "runtime.json").write_text(json.dumps({"tools": ["calc"]}))
        return out

    real_eval = evaluation.evaluate

    def spy(model, tok, cfg, **kw):
        seen["complete"] = kw.get("complete")
        return real_eval(model, tok, cfg, **kw)

    monkeypatch.setattr(importer, "save_model", save_with_runtime)
    monkeypatch.setattr(evaluation, "evaluate", spy)
    s = tiny_settings("eval.n_examples=2", f"agent.memory={tmp_path}/memory.sqlite")
    (key,) = run_stage_on("import", [], make_context(s)).outputs
    assert seen["complete"] is not None and "runtime.json" in make_context(s).store.manifest(key).files



def test_a_token_that_runs_past_a_closing_tag_is_taken_back(tiny, monkeypatch):
    """BPE merges such as `><` end a call mid-token; the runtime takes that token back (text, ids and cache) so
    the model reads `</calc><result>…` exactly as when the tag ends on a token boundary."""
    import copy

    import agent_forge_core.agent.generate as g
    from agent_forge_core.agent.tools import calculator_tool

    model, tok = copy.deepcopy(tiny[0]), copy.deepcopy(tiny[1])
    tok.add_tokens(["><"])
    model.resize_token_embeddings(len(tok))
    script = tok(" <calc>17*3</calc", add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("><")]
    real_next = g._next_tokens
    prompts = ["Q: What is 17 times 3?\nA:", "Q: Multiply seventeen by three, please.\nA:"]

    def scripted(run):
        it = iter(script)  # every row writes the script (in step), then the model's own tokens
        monkeypatch.setattr(g, "_next_tokens", lambda logits, t, gen: (
            torch.full(logits.shape[:-1], x) if (x := next(it, None)) is not None else real_next(logits, t, gen)))
        return run()

    kw = dict(max_new_tokens=20, stop_at_newline=False)
    a, b = (scripted(lambda c=c: g.generate(model, tok, prompts[0], {"calc": calculator_tool()}, use_cache=c, **kw))
            for c in (True, False))
    assert a.text.startswith(" <calc>17*3</calc><result>51</result>") and "<<" not in a.text, a.text
    assert [r for _, r in a.calls] == ["51"] and a.text == b.text and a.model_tokens == b.model_tokens == 20
    # in a batch the token leaves its row's context by a mask, as by the crop alone
    batch = scripted(lambda: g.generate_batch(model, tok, prompts, {"calc": calculator_tool()}, **kw))
    alone = scripted(lambda: g.generate(model, tok, prompts[1], {"calc": calculator_tool()}, **kw))
    assert [x.text for x in batch] == [a.text, alone.text] and "<<" not in alone.text
    # the answer's ids: the model's `><` kept as its own, the result after it as the executor's
    merged = tok.convert_tokens_to_ids("><")
    i = a.ids.index(merged)
    assert a.ids == b.ids == batch[0].ids and a.written == b.written == batch[0].written
    assert a.ids[:i] == script[:-1] and a.written[i] == 1 and a.written[i + 1] == 0
    assert tok.decode(a.ids[i:i + a.written[i + 1:].index(1) + 1]) == "><result>51</result>"


def test_dense_embeddings_are_the_mean_of_the_last_hidden_states_whatever_the_batching(tiny):
    from agent_forge_core.agent.retrieval.dense import embed

    model, tok = tiny
    texts = ["Alice has 3 apples.", "Q: What is 17 times 3?\nA: 51", "x"]
    batched = embed(model, tok, texts, batch_size=2)
    for text, row in zip(texts, batched):
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float().mean(0)
        assert np.allclose(row, torch.nn.functional.normalize(h, dim=-1).numpy(), atol=1e-5)
