"""Prompt Baking: the loss against the reference formula, masks and alignment, a bake that makes the
unprompted tiny model match the prompted one, and the stage (float and ternary inputs)."""
import json
import re

import pytest
import torch

from agent_forge_core.agent.runtime import Runtime
from agent_forge_core.agent.settings import AgentSettings, RuntimeSpec
from agent_forge_core.agent.tools import calculator_tool
from agent_forge_core.baking.loss import baking_kl
from agent_forge_core.baking.probes import recovery
from agent_forge_core.report import collect, markdown
from agent_forge_core.baking.prompts import WRITE_DEMO
from agent_forge_core.baking.queries import DEMO_WORDS, identity_questions, own_queries, training_queries
from agent_forge_core.baking.settings import BakingSettings
from agent_forge_core.baking.stage import TRAFFIC_SEED, bake_steps, traffic
from agent_forge_core.baking.train import (_forward, accumulate, bake, kl_of, length_groups, make_student,
                                          teacher_logprobs)
from agent_forge_core.baking.trajectories import Query, Trajectory, aligned, answer_ids, sample
from agent_forge_core.context import make_context
from agent_forge_core.errors import ConfigError
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.runner import run_stage_on


def test_loss_equals_the_reference_formula_on_random_logits():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0]]).bool()
    p_t = torch.softmax(t, -1)
    # Σ_t Σ_v P_teacher (log P_teacher − log P_student) over masked positions, / batch size
    ref = (p_t * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1)[mask].sum() / 2
    ours = baking_kl(s[mask], torch.log_softmax(t, -1)[mask], 2)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert baking_kl(t[mask], torch.log_softmax(t, -1)[mask], 2).item() == pytest.approx(0.0, abs=1e-5)


def _traj(tok, prompt: str, query: str, answer: str) -> Trajectory:
    head = tok(f"{prompt}\n\n", add_special_tokens=False).input_ids if prompt else []
    ids = tok(answer + "\n", add_special_tokens=False).input_ids
    mask = [1] * len(ids)
    return Trajectory(Query(query), head, tok(query, add_special_tokens=False).input_ids, ids, mask, answer)


@pytest.mark.parametrize("kind", ["lora", "latent"])
def test_an_empty_prompt_gives_zero_kl_and_zero_gradient(tiny_model_dir, kind):
    model, tok = load_model(str(tiny_model_dir))
    if kind == "latent":
        from agent_forge_core.bitnet.convert import convert

        convert(model)
    trajs = [_traj(tok, "", "Q: What is 3 + 4?\nA:", " 7"), _traj(tok, "", "Q: Name a fruit.\nA:", " fig")]
    targets = teacher_logprobs(model, trajs, tok.pad_token_id)
    student, params = make_student(model, kind, BakingSettings(), 0)
    if kind == "lora":  # a non-zero adapter that is switched off: the teacher is the adapter-free model
        with torch.no_grad():
            for n, p in student.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
        with student.disable_adapter():
            targets = teacher_logprobs(student, trajs, tok.pad_token_id)
        with torch.no_grad():
            for n, p in student.named_parameters():
                if "lora_B" in n:
                    p.zero_()
    logits = _forward(student, [t.student_ids() for t in trajs], tok.pad_token_id)
    loss = baking_kl(logits, torch.cat(targets).float(), len(trajs))
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert max(p.grad.abs().max().item() for p in params if p.grad is not None) < 1e-6


def test_trajectory_ids_are_the_ids_the_model_read_and_executor_tokens_carry_no_loss(tiny_model_dir):
    from agent_forge_core.agent.generate import generate_batch

    model, tok = load_model(str(tiny_model_dir))
    calc = calculator_tool()
    query = "Q: 17*3?\nA:"
    # an answer that opens with a call (an assistant prefix): the runtime runs it and the model writes on
    (g,) = generate_batch(model, tok, [query], {"calc": calc}, prefixes=[" <calc>17*3</calc>"], max_new_tokens=6)
    ids, mask = answer_ids(g)
    result_ids = tok("<result>51</result>", add_special_tokens=False).input_ids
    assert g.calls[0][1] == "51" and ids[:len(result_ids)] == result_ids and not any(mask[:len(result_ids)])
    assert all(mask[len(result_ids):]) and len(ids) == len(result_ids) + g.model_tokens
    head = tok(query + " <calc>17*3</calc>", add_special_tokens=False).input_ids
    t = Trajectory(Query(query), tok("Use the calculator.\n\n", add_special_tokens=False).input_ids,
                   head, ids, mask)
    assert aligned(t)
    # the ids are those the model read: teacher-forced, its greedy choice at each written position is the token
    ids_s, mask_s = t.student_ids()
    logits = model(input_ids=torch.tensor([ids_s])).logits[0, :-1]
    at = torch.tensor(mask_s[1:]).bool()
    assert torch.equal(logits[at].argmax(-1), torch.tensor(ids_s[1:])[at])
    # the loss sees exactly the model's tokens: as many rows as mask ones (each predicted from the one before)
    rows = _forward(model, [t.student_ids()], tok.pad_token_id)
    assert rows.shape[0] == sum(mask) == teacher_logprobs(model, [t], tok.pad_token_id)[0].shape[0]
    assert torch.allclose(rows, logits[at], atol=1e-5)
    broken = Trajectory(t.query, t.prompt_ids, t.query_ids, ids, [0] * len(ids))
    assert not aligned(broken)  # nothing generated: nothing to align (and nothing to learn)


def test_a_token_written_across_a_call_and_its_result_stays_the_models_token(tiny_model_dir):
    """The model may write the call's closing `>` and the next tag's `<` as one token (`><`); the generator takes
    it back, feeds the result from the `>` on, and the answer's ids keep what the model read."""
    from agent_forge_core.agent.generate import _Answer

    _, tok = load_model(str(tiny_model_dir))
    tok.add_tokens(["><"])  # as SmolLM2's vocabulary has it (the tiny one does not; no model runs here)
    merged = tok("><", add_special_tokens=False).input_ids
    assert len(merged) == 1
    events = []
    a = _Answer(tok, "Q: 17*3?\nA:", "", {"calc": calculator_tool()}, frozenset(), 32, 4, True, events.append)
    for t in tok(" <calc>17*3</calc", add_special_tokens=False).input_ids + merged:
        assert a.add(t, tok.eos_token_id)
    take_back, new = a.run_call(a.pending_call())
    assert take_back and a.out.text.endswith("</calc><result>51</result>")
    # what chat and the stream show is the answer's text: the `<` taken back was never shown
    assert "".join(e.text for e in events if e.kind in ("text", "result")) == a.out.text
    fed = tok("><result>51</result>", add_special_tokens=False).input_ids
    assert new == fed and a.out.ids[-len(fed):] == fed
    assert a.out.written[-len(fed):] == [1] + [0] * (len(fed) - 1)  # `><` is the model's, the rest the executor's
    assert a.ids[-len(a.out.ids):] == a.out.ids  # the answer's ids are the tail of what the model reads


def test_teacher_logprobs_with_the_prompt_read_once_equal_the_whole_prompted_rows(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    prompt = "Whatever the question is, answer with the number seven and nothing else, please. " * 2
    trajs = [_traj(tok, prompt, "Q: What is 3 + 4?\nA:", " 7"), _traj(tok, prompt, "Q: Name a fruit.\nA:", " fig tree"),
             _traj(tok, prompt, "Q: 12*3?\nA:", " 36, or 7")]
    assert len(trajs[0].prompt_ids) >= 16  # long enough to be read once (SHARED_MIN)
    got = teacher_logprobs(model, trajs, tok.pad_token_id, batch_size=2)
    for t, g in zip(trajs, got):  # each row alone, prompt included, no cache: the reference
        ids, mask = t.teacher_ids()
        ref = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1][torch.tensor(mask[1:]).bool()], -1)
        assert g.shape == ref.shape and torch.allclose(g, ref, atol=1e-4)
    # a teacher temperature T: log softmax(z / T), the same as renormalising the T = 1 log-probabilities / T
    sharp = teacher_logprobs(model, trajs, tok.pad_token_id, batch_size=2, temperature=0.5)
    for g, s in zip(got, sharp):
        assert torch.allclose(s, torch.log_softmax(g / 0.5, -1), atol=1e-4)
        assert (s.argmax(-1) == g.argmax(-1)).all()
        assert (-(s.exp() * s).sum(-1) < -(g.exp() * g).sum(-1)).all()  # sharper: lower entropy everywhere


@pytest.mark.parametrize("objective", ["kl", "sft"])
def test_a_batch_in_length_runs_has_the_padded_batch_gradient(tiny_model_dir, objective):
    assert length_groups([10, 100, 12, 95, 11]) == [[0, 4, 2], [3, 1]]
    model, tok = load_model(str(tiny_model_dir))
    prompt = "Always answer 7."
    trajs = [_traj(tok, prompt, "Q: What is 3 + 4?\nA:", " 7"),
             _traj(tok, prompt, "Q: Name a fruit.\nA:", " a fig, a pear, an apple, a plum, a grape, a lemon, a lime"),
             _traj(tok, prompt, "Q: 12*3?\nA:", " 36"),
             _traj(tok, prompt, "Q: Tell me about rivers and their long and winding ways.\nA:", " they run to the sea")]
    targets = teacher_logprobs(model, trajs, tok.pad_token_id)
    student, params = make_student(model, "lora", BakingSettings(), 0)
    with torch.no_grad():  # a non-zero adapter, so the gradients reach both LoRA factors
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    grads, losses = [], []
    for slack in (float("inf"), 1.0):  # one padded batch; runs of equal length only (here: each row alone)
        student.zero_grad(set_to_none=True)
        losses.append(accumulate(student, trajs, targets, tok.pad_token_id, objective, "float32", slack=slack))
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert len(length_groups([len(t.student_ids()[0]) for t in trajs], 1.0)) == 4
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)
    if objective == "kl":  # the held-out curve reads in length runs too: the padded batch's mean KL
        assert kl_of(student, trajs, targets, tok.pad_token_id) == pytest.approx(losses[0], rel=1e-4)


def test_the_agent_traffic_is_its_own_answers_to_each_bakes_queries(tiny_settings, tmp_path):
    s = tiny_settings("baking.order=[tool,memory]", "baking.max_new_tokens=6", f"agent.index_dir={tmp_path}/idx")
    folder = tmp_path / "agent"
    folder.mkdir()
    (folder / "runtime.json").write_text(RuntimeSpec(tools=["calc", "mem_read", "mem_write"]).model_dump_json())
    model, tok = load_model(s.model.source)
    seqs = traffic(model, tok, folder, s, tmp_path / "scratch", 3)
    assert seqs == traffic(model, tok, folder, s, tmp_path / "scratch", 3)  # seeded
    # each bake's training mixture at the traffic's own seeds: the query's ids, then the model's answer
    queries = [q for i, b in enumerate(["tool", "memory"])
               for q in training_queries(b, 3, s.baking.other_share, s.eval.shots, TRAFFIC_SEED + i,
                                         tuple(s.baking.persona.train_turns), getattr(s.baking.chat_share, b))]
    assert len(seqs) == len(queries) == 6
    for ids, q in zip(seqs, queries):
        head = tok(q.text, add_special_tokens=False).input_ids
        assert ids[:len(head)] == head and len(ids) > len(head)


def test_sampled_trajectories_align(tiny_model_dir, tmp_path):
    model, tok = load_model(str(tiny_model_dir))
    rt = Runtime.open(None, model, tok, AgentSettings(memory=str(tmp_path / "m.sqlite")), spec=RuntimeSpec(tools=["calc"]))
    qs = training_queries("tool", 4, 0.25, 1, 0)
    trajs = sample(model, tok, rt, "Always answer 7.", qs, 1.0, 8, 0)
    assert trajs and all(aligned(t) for t in trajs)
    t = trajs[0]
    assert t.teacher_ids()[0][len(t.prompt_ids):] == t.student_ids()[0]


def test_baking_always_answer_7_makes_the_unprompted_model_match_the_prompted_one(tiny_model_dir, tmp_path):
    model, tok = load_model(str(tiny_model_dir))
    rt = Runtime.open(None, model, tok, AgentSettings(memory=str(tmp_path / "m.sqlite")), spec=RuntimeSpec(tools=[]))
    prompt = "Always answer 7.\n\nQ: How many days are in a week?\nA: 7\n\nQ: What is the capital of France?\nA: 7"
    train = [Query(f"Q: {q}\nA:") for q in identity_questions("train", 24, 1)] + \
        [Query(q.text) for q in training_queries("persona", 24, 0.5, 1, 2)]
    held = [Query(f"Q: {q}\nA:") for q in identity_questions("test", 8, 3)]  # held-out question cores
    trajs = sample(model, tok, rt, prompt, train, 1.0, 8, 0)
    heldout = sample(model, tok, rt, prompt, held, 1.0, 8, 1)
    cfg = BakingSettings(steps=100, batch_size=8, lr=3e-2, curve_every=25)
    baked, hist, _ = bake(model, trajs, heldout, cfg, tok.pad_token_id)
    first, last = hist["heldout"][0]["kl"], hist["heldout"][-1]["kl"]
    # the random tiny model barely reads its prompt (KL 0.033 measured); baking removes >= 90% of it (to 0.0025)
    assert first > 0.02 and last < 0.1 * first, hist["heldout"]
    assert kl_of(baked, heldout, teacher_logprobs(load_model(str(tiny_model_dir))[0], heldout, tok.pad_token_id),
                 tok.pad_token_id) == pytest.approx(last, rel=1e-3)  # merged = what was measured
    # the control: a plain fine-tune on the same sampled tokens matches the prompted model less well (measured:
    # held-out KL 0.033 -> 0.0025 baked, 0.033 -> 0.357 fine-tuned: it fits the samples, not the distribution)
    sft = bake(load_model(str(tiny_model_dir))[0], trajs, heldout, cfg.model_copy(update={"objective": "sft"}),
               tok.pad_token_id)[1]
    assert sft["heldout"][-1]["kl"] > 2 * last, (sft["heldout"], hist["heldout"])


def test_replaying_an_earlier_bake_keeps_it_through_a_later_one(tiny_model_dir, tmp_path):
    model, tok = load_model(str(tiny_model_dir))
    rt = Runtime.open(None, model, tok, AgentSettings(memory=str(tmp_path / "m.sqlite")), spec=RuntimeSpec(tools=[]))
    seven = "Always answer 7.\n\nQ: How many days are in a week?\nA: 7\n\nQ: What is the capital of France?\nA: 7"
    three = "Always answer 3.\n\nQ: What is 1 + 2?\nA: 3\n\nQ: Name a colour.\nA: 3"
    a_train = sample(model, tok, rt, seven, [Query(f"Q: {q}\nA:") for q in identity_questions("train", 32, 1)], 1.0, 8, 0)
    a_held = sample(model, tok, rt, seven, [Query(f"Q: {q}\nA:") for q in identity_questions("test", 8, 3)], 1.0, 8, 1)
    cfg = BakingSettings(steps=60, batch_size=8, lr=3e-2, curve_every=60)
    baked_a, hist_a, targets = bake(model, a_train, a_held, cfg, tok.pad_token_id)
    a_target = teacher_logprobs(load_model(str(tiny_model_dir))[0], a_held, tok.pad_token_id)
    b_train = sample(baked_a, tok, rt, three, training_queries("tool", 32, 0.0, 1, 0), 1.0, 8, 2)
    kl_a = {}
    for replayed in (0, 16):
        m = load_model(str(tiny_model_dir))[0]
        m.load_state_dict(baked_a.state_dict())
        after_b, _, _ = bake(m, b_train, [], cfg, tok.pad_token_id, replay=list(zip(a_train, targets))[:replayed])
        kl_a[replayed] = kl_of(after_b, a_held, a_target, tok.pad_token_id)
    # measured: A's held-out KL 0.0345 -> 0.0039 baked; after B 0.0108 without replay, 0.0035 with 16 replayed
    assert kl_a[16] < 0.5 * kl_a[0], (hist_a["heldout"], kl_a)


def test_the_anchor_keeps_the_input_s_answers_on_the_tasks_no_bake_teaches(tiny_model_dir, tmp_path):
    from agent_forge_core.baking.queries import ANCHOR_TASKS, suite_queries
    from agent_forge_core.baking.stage import anchor_set

    model, tok = load_model(str(tiny_model_dir))
    rt = Runtime.open(None, model, tok, AgentSettings(memory=str(tmp_path / "m.sqlite")), spec=RuntimeSpec(tools=[]))
    cfg = BakingSettings(steps=60, batch_size=8, lr=3e-2, curve_every=60, trajectories=32, anchor=1.0, max_new_tokens=8)
    anchor = anchor_set(model, tok, rt, cfg, 1, tok.pad_token_id)
    assert len(anchor) == 32 and {t.query.kind for t, _ in anchor} == set(ANCHOR_TASKS)
    assert all(not t.prompt_ids for t, _ in anchor)  # the input unprompted: its own answers and distributions
    held = sample(model, tok, rt, "", suite_queries(list(ANCHOR_TASKS), "test", 8, 1, 5), 1.0, 8, 5)
    held_target = teacher_logprobs(model, held, tok.pad_token_id)
    seven = "Always answer 7.\n\nQ: How many days are in a week?\nA: 7\n\nQ: What is the capital of France?\nA: 7"
    train = sample(model, tok, rt, seven, [Query(f"Q: {q}\nA:") for q in identity_questions("train", 32, 1)], 1.0, 8, 0)
    kl = {}
    for anchored in (False, True):
        baked, _, _ = bake(load_model(str(tiny_model_dir))[0], train, [], cfg, tok.pad_token_id,
                           replay=anchor if anchored else [])
        kl[anchored] = kl_of(baked, held, held_target, tok.pad_token_id)
    assert kl[True] < 0.5 * kl[False], kl


def test_on_ternary_weights_lora_rounds_away_and_ste_keeps_the_bake(tiny_model_dir, tmp_path):
    """Why `ternary_input=ste` is the default: LoRA merged into latents that sit at their codes' centres is
    rounded away when re-ternarised; training the latents under STE keeps what it learned."""
    from agent_forge_core.bitnet.convert import convert
    from agent_forge_core.formats.bitnet import load_bitnet, save_bitnet

    model, tok = load_model(str(tiny_model_dir))
    convert(model)
    save_bitnet(model, tok, tmp_path / "bn", "2bit")
    model, tok = load_bitnet(tmp_path / "bn", trainable=True)
    rt = Runtime.open(None, model, tok, AgentSettings(memory=str(tmp_path / "m.sqlite")), spec=RuntimeSpec(tools=[]))
    prompt = "Always answer 7.\n\nQ: How many days are in a week?\nA: 7\n\nQ: What is the capital of France?\nA: 7"
    train = [Query(f"Q: {q}\nA:") for q in identity_questions("train", 24, 1)] + \
        [Query(q.text) for q in training_queries("persona", 24, 0.5, 1, 2)]
    heldout = sample(model, tok, rt, prompt, [Query(f"Q: {q}\nA:") for q in identity_questions("test", 8, 3)], 1.0, 8, 1)
    trajs = sample(model, tok, rt, prompt, train, 1.0, 8, 0)
    target = teacher_logprobs(model, heldout, tok.pad_token_id)
    start = kl_of(model, heldout, target, tok.pad_token_id)
    after = {}
    for kind in ("lora", "latent"):
        m, _ = load_bitnet(tmp_path / "bn", trainable=True)
        cfg = BakingSettings(steps=100, batch_size=8, lr=3e-2, ste_lr=1e-3, curve_every=50)
        baked, hist, _ = bake(m, trajs, heldout, cfg, tok.pad_token_id, kind)
        after[kind] = (hist["heldout"][-1]["kl"], kl_of(baked, heldout, target, tok.pad_token_id))
    # measured: start 0.0030; LoRA 0.0004 with its float adapter, 0.0029 once merged and re-ternarised;
    # STE 0.0007 (its training already saw the ternary forward)
    lora_kept = (start - after["lora"][1]) / (start - after["lora"][0])
    assert after["lora"][0] < 0.3 * start and lora_kept < 0.25
    assert after["latent"][1] < 0.4 * start and after["latent"][1] == pytest.approx(after["latent"][0], rel=1e-3)


def test_persona_training_questions_come_after_earlier_turns():
    qs = training_queries("persona", 60, 0.0, 1, 0, (0, 2))
    assert {q.text.count("Q: ") - 1 for q in qs} == {0, 2} and all(q.text.endswith("\nA:") for q in qs)
    cores = set(identity_questions("train", 200, 0))
    assert all(q.text.rsplit("Q: ", 1)[1][:-3] in cores for q in qs)  # the identity question is the last turn
    with pytest.raises(ValueError, match="train_turns"):
        BakingSettings(persona={"train_turns": [-1]})


def test_tool_bakes_see_plain_identity_questions_where_no_tool_belongs():
    train_cores = set(identity_questions("train", 200, 0))
    for name in ("tool", "memory", "retrieval"):
        qs = training_queries(name, 48, 0.25, 1, 0, chat_share=1 / 3)
        chat = [q for q in qs if q.kind == "chat"]
        assert len(chat) == 4 and all(q.text[3:-3] in train_cores for q in chat)  # a third of the 12 others, train split
    assert not [q for q in training_queries("persona", 48, 0.25, 1, 0) if q.kind == "chat"]
    # per bake: none for the tool bake by default (its teacher calls on identity questions)
    # memory: only identity questions among its others
    assert BakingSettings().chat_share.identity() == {"tool": 0.0, "memory": 1.0, "retrieval": 1 / 3}
    memory = training_queries("memory", 48, 0.25, 1, 0, chat_share=1.0)
    assert sum(q.kind == "chat" for q in memory) == 12 and sum(q.kind == "memory" for q in memory) == 36
    with pytest.raises(ValueError, match="persona"):
        BakingSettings(chat_share={"persona": 0.5})
    # one bake's share set alone keeps the others' defaults
    from agent_forge_core.config import load_settings

    assert load_settings(overrides=["baking.chat_share.memory=0.5"]).baking.chat_share.identity() == {
        "tool": 0.0, "memory": 0.5, "retrieval": 1 / 3}


def test_memory_queries_never_use_the_demonstrations_keys():
    demo_keys = set(re.findall(r"(\w+)=\d+", WRITE_DEMO))
    assert demo_keys == set(DEMO_WORDS)
    qs = own_queries("memory", "train", 64, 0) + own_queries("memory", "test", 64, 0)
    keys = {k for q in qs for k in [*re.findall(r"(\w+)=\d+", q.text), *re.findall(r"value of (\w+)", q.text), *q.records]}
    assert len(keys) > 10 and keys.isdisjoint(demo_keys)


def test_step_factors_scale_each_bake_and_one_override_keeps_the_others():
    cfg = BakingSettings(steps=10, step_factor={"memory": 3})
    assert [bake_steps(b, cfg) for b in ("tool", "memory", "retrieval", "persona")] == [20, 30, 10, 20]
    with pytest.raises(ValueError, match="persona"):
        BakingSettings(step_factor={"persona": 0})


def test_a_recall_counts_only_a_stated_value_and_a_read_back_only_an_answer_ending_at_the_read():
    from agent_forge_core.agent.generate import Generation
    from agent_forge_core.agent.markup import Call
    from agent_forge_core.baking.probes import NUMBER, after_results, read_back

    read = (Call("mem_read", "dog", 0, 26), "64")
    stated = Generation(" <mem_read>dog</mem_read><result>64</result> 64", calls=[read])
    ended = Generation(" <mem_read>dog</mem_read><result>64</result>", calls=[read])
    other = Generation(" <mem_read>dog</mem_read><result>64</result> I do not know.", calls=[read])
    calc = Generation(" <calc>60+4</calc><result>64</result>", calls=[(Call("calc", "60+4", 0, 18), "64")])
    assert [NUMBER.search(after_results(g)) is not None for g in (stated, ended, other)] == [True, False, False]
    assert [read_back(g) for g in (stated, ended, other, calc, Generation(" 64"))] == ["", "64", "", "", ""]


def test_a_primary_only_probe_decodes_less_and_gives_the_same_primary(tiny_model_dir, tmp_path, monkeypatch):
    from agent_forge_core.agent.runtime import BUILTIN
    from agent_forge_core.baking import probes as P

    model, tok = load_model(str(tiny_model_dir))
    rt = Runtime.open(None, model, tok, AgentSettings(memory=str(tmp_path / "m.sqlite"), index_dir=str(tmp_path / "i")),
                      spec=RuntimeSpec(tools=list(BUILTIN)))
    decoded = []
    real_all, real_batch = P.answer_all, P.generate_batch
    monkeypatch.setattr(P, "answer_all", lambda m, t, r, texts, *a, **k: decoded.append(len(texts))
                        or real_all(m, t, r, texts, *a, **k))
    monkeypatch.setattr(P, "generate_batch", lambda m, t, texts, *a, **k: decoded.append(len(texts))
                        or real_batch(m, t, texts, *a, **k))
    for b, probe in P.PROBES.items():
        decoded.clear()
        full = probe(model, tok, rt, "", 3, 0, 1, turns=(0, 2))
        n_full = sum(decoded)
        decoded.clear()
        only = probe(model, tok, rt, "", 3, 0, 1, turns=(0, 2), primary_only=True)
        assert only == {P.PRIMARY[b]: full[P.PRIMARY[b]]}, b
        assert sum(decoded) < n_full, b


def test_a_calculator_call_computes_a_gold_step_only_with_an_expression():
    from agent_forge_core.baking.probes import calc_call

    target = " 7 * 2 = 14. 14 - 2 = 12. Answer: 12"
    assert calc_call("7*2", "14", target) == (True, True)
    assert calc_call("14 - 2", "12", target) == (True, True)
    assert calc_call("14", "14", target) == (False, False)  # restates the step's result: computes nothing
    assert calc_call("7*3", "21", target) == (True, False)
    assert calc_call("12*(-2)", "-24", target) == (True, False)
    assert calc_call("-3", "-3", target) == (False, False)


def test_recovery_ratio():
    r = recovery({"a": 0.1, "b": 0.2}, {"a": 0.5, "b": 0.2}, {"a": 0.4, "b": 0.3})
    assert r["a"] == pytest.approx(0.75) and r["b"] is None


def test_identity_paraphrases_are_held_out():
    train, test = set(identity_questions("train", 200, 0)), set(identity_questions("test", 200, 0))
    strip = lambda q: q.split(". ")[-1].split(", ")[-1].split(": ")[-1].split("! ")[-1].lower()  # noqa: E731
    assert {strip(q) for q in train}.isdisjoint({strip(q) for q in test})


BAKE = ["cognate.enabled=false", "baking.enabled=true", "baking.order=[tool,persona]", "baking.trajectories=4",
        "baking.heldout=2", "baking.steps=3", "baking.batch_size=2", "baking.probe_examples=4",
        "baking.forgetting_turns=[0]", "baking.max_new_tokens=6", "baking.persona.expand_tokens=6",
        "baking.gates.perplexity=10", "baking.gates.perplexity_ood=10"]


def test_stage_bakes_measures_and_writes_the_agent(tiny_settings, tmp_path):
    s = tiny_settings(*BAKE, f"agent.index_dir={tmp_path}/idx")
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    res = run_stage_on("baking", [base], ctx)
    (key,) = res.outputs
    folder = ctx.store.get(key)
    spec = json.loads((folder / "runtime.json").read_text())
    assert spec["tools"] == ["calc"] and spec["instructions"] is False
    assert (folder / "prompt_tool.txt").read_text().startswith("You can use tools")
    assert "Forge" in (folder / "prompt_persona.txt").read_text()
    info = res.info[key]
    assert set(info["probes"]) == {"tool", "persona"}
    assert set(info["probes"]["tool"]) == {"base", "prompted", "baked", "output"}
    # the agent's numbers are the output's: the last bake's probe is the one made after it, the earlier measured again
    assert info["probes"]["persona"]["output"] == info["probes"]["persona"]["baked"]
    assert info["agent"]["tool call_rate"] == info["probes"]["tool"]["output"]["call_rate"]
    assert set(info["forgetting"]["persona"]) == {"tool", "persona"}
    # the forge report's tables: every probe metric in the three conditions with its recovery, and forgetting
    tables = {t.split(":")[0]: rows for t, rows in info["tables"].items()}  # manifests sort their keys
    probes, forgetting = tables["probes"]["rows"], tables["forgetting"]["rows"]
    call = next(r for r in probes if r["bake"] == "tool" and r["metric"] == "call_rate")
    assert call["baked"] == info["probes"]["tool"]["baked"]["call_rate"]
    assert call["recovery"] in ("-", info["recovery"]["tool"]["call_rate"])
    assert forgetting[-1] == {"after": "persona", **info["forgetting"]["persona"]}
    report = markdown(collect(ctx.store, [key]), [key], ctx.store, "t")
    assert "## baking: probes" in report and "| bake | metric | base | prompted | baked | output | recovery |" in report
    assert "| tool | call_rate |" in report
    hist = json.loads((folder / "baking_history.json").read_text())["history"]
    assert len(hist["tool"]["steps"]) == 6 and hist["tool"]["heldout"][0]["step"] == 0  # step_factor: tool 2
    assert len(hist["persona"]["steps"]) == 6  # step_factor: persona 2
    assert info["departures"]["lora_r"] == {"ours": 8, "reference": 32}
    assert "arithmetic" in res.metrics[key]  # the suite, run with the baked runtime
    # the baked weights differ from the input's
    a, _ = load_model(str(ctx.store.get(base)))
    b, _ = load_model(str(folder))
    assert not torch.equal(a.model.layers[0].self_attn.q_proj.weight, b.model.layers[0].self_attn.q_proj.weight)
    assert run_stage_on("baking", [base], ctx).reused


def test_stage_on_a_ternary_input_trains_latents_or_refuses(tiny_settings, tmp_path):
    bn = ["bitnet.enabled=true", "bitnet.steps=2", "bitnet.warmup=1", "bitnet.lr_warmup=1"]
    s = tiny_settings(*BAKE, *bn, "baking.order=[persona]", "baking.ste_lr=0.02", "baking.persona.pursuit_rounds=1",
                      f"agent.index_dir={tmp_path}/idx")
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    (ternary,) = run_stage_on("bitnet", [base], ctx).outputs
    (key,) = run_stage_on("baking", [ternary], ctx).outputs
    folder = ctx.store.get(key)
    info = ctx.store.manifest(key).info
    assert (folder / "bitnet.json").is_file() and info["student"] == "latent"
    # Prompt Pursuit: the baked model re-prompted and baked again, measured as its own row
    assert set(info["probes"]["persona"]) == {"base", "prompted", "baked", "persona_pursuit1", "output"}
    assert info["probes"]["persona"]["output"] == info["probes"]["persona"]["persona_pursuit1"]  # the last round's
    assert set(info["loss"]) == {"persona", "persona_pursuit1"}
    from safetensors.torch import load_file

    before = load_file(str(ctx.store.get(ternary) / "model.safetensors"))
    after = load_file(str(folder / "model.safetensors"))
    changed = [k for k in before if k.endswith(".packed") and not torch.equal(before[k], after[k])]
    assert changed  # some ternary codes moved
    refuse = make_context(tiny_settings(*BAKE, *bn, "baking.order=[persona]", "baking.ternary_input=refuse"))
    with pytest.raises(ConfigError, match="ternary_input=refuse.*ternary_input=ste"):
        run_stage_on("baking", [ternary], refuse)
