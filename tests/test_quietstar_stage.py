"""The Quiet-STaR stage on the tiny model: training, thought-mode inference, checkpoint, gates, carry-forward."""
import json

import pytest
import torch

from agent_forge_core.context import make_context
from agent_forge_core.errors import GateFailed
from agent_forge_core.evals.settings import EvalSettings
from agent_forge_core.evals.suite import greedy_complete
from agent_forge_core.model_io import load_model, save_model
from agent_forge_core.evals.suite import suppress
from agent_forge_core.quietstar.engine import think
from agent_forge_core.quietstar.generate import ThoughtLM, thought_generate
from agent_forge_core.quietstar.settings import QuietStarSettings
from agent_forge_core.quietstar.state import ThoughtState
from agent_forge_core.quietstar.tokens import prepare_tokens
from agent_forge_core.quietstar.train import train_quietstar
from agent_forge_core.stages.plan import plan
from agent_forge_core.stages.runner import run_stage_on
from agent_forge_core.training.sft_data import batches

QS = ["cognate.enabled=false", "quietstar.enabled=true", "quietstar.steps=4", "quietstar.seq_len=32",
      "quietstar.warmup=1", "quietstar.eval_examples=8", "quietstar.eval_text_tokens=256", "quietstar.grad_norm_every=2",
      "quietstar.lr=0.001"]


def _fresh(tiny_model_dir, head_std=0.0):
    model, tok = load_model(str(tiny_model_dir))
    tokens = prepare_tokens(model, tok)
    torch.manual_seed(0)
    state = ThoughtState.initial(model, tok, tokens)
    if head_std:
        with torch.no_grad():
            state.head[-1].weight.normal_(0, head_std)
    return model.eval(), tok, state


def test_thought_generation_equals_the_parallel_forward_on_the_generated_prefix(tiny_model_dir):
    model, tok, state = _fresh(tiny_model_dir, head_std=0.3)
    state.write_embeddings(model)
    prompts = [tok(p, add_special_tokens=False).input_ids for p in ("Q: What is 3 + 4?\nA:", "Records: cat=41.")]
    batched = thought_generate(model, state, prompts, 6, n_thought=2)
    for prompt, gen in zip(prompts, batched):
        assert gen == thought_generate(model, state, [prompt], 6, n_thought=2)[0]  # left padding changes nothing
        assert len(gen) == 6 and not set(gen) & set(state.tokens.ids)
        with torch.no_grad():
            for i, t in enumerate(gen):
                ids = torch.tensor([prompt + gen[:i]])
                th = think(model, state, ids, n_thought=2, n_talk=1, sampler="greedy")
                logits = suppress(th.mixed_logits[0][0, -1], state.tokens.ids)
                assert int(logits.argmax()) == t


def test_checkpoint_round_trip_reproduces_thought_mode_logits(tiny_model_dir, tmp_path):
    model, tok, state = _fresh(tiny_model_dir, head_std=0.3)
    with torch.no_grad():
        state.thought_embedding.add_(0.01)  # trained-looking thought embeddings, not the "---" row
    ids = tok("Records: cat=41; sun=7. The value of sun is", return_tensors="pt").input_ids
    state.write_embeddings(model)  # as the stage does before measuring and saving (the lm_head is tied)
    with torch.no_grad():
        before = ThoughtLM(model, state, 2)(ids).logits
    folder = save_model(model, tok, tmp_path / "qs")
    state.save(folder, {"n_thought": 2})
    m2, t2 = load_model(str(folder))
    s2, meta = ThoughtState.load(folder, m2)
    with torch.no_grad():
        after = ThoughtLM(m2, s2, meta["n_thought"])(ids).logits
    assert torch.equal(before, after)
    assert t2.convert_ids_to_tokens(list(s2.tokens.ids)) == ["<|startthought|>", "<|endthought|>"]


def test_training_learns_a_mix_and_lowers_the_talk_loss(tiny_model_dir):
    model, tok, state = _fresh(tiny_model_dir)
    seq = tok("Q: Ivo has 15 dollars and deposits 13. How many now?\nA: 15 + 13 = 28. Answer: 28\n",
              add_special_tokens=False).input_ids
    cfg = QuietStarSettings(steps=12, warmup=1, lr=3e-3, seq_len=32, batch_size=2, grad_norm_every=4)
    hist = train_quietstar(model, state, batches([(seq, seq)] * 4, 2, tok.pad_token_id, 0), cfg, tok.pad_token_id)
    assert len(hist) == 12
    assert hist[-1]["loss_talk"] < 0.9 * hist[0]["loss_talk"]  # 6.42 -> 5.21 measured
    assert hist[-1]["mix_mean"] != 0.0  # the head left its zero init
    assert any(h.get("reward_positive_share", 0) > 0 for h in hist)
    measured = [h for h in hist if "grad_norm_policy" in h]
    assert len(measured) == 3 and all(h["grad_norm_nll"] > 0 for h in measured)


def test_head_lr_scales_the_heads_step_and_leaves_the_model_s_alone(tiny_model_dir):
    runs = {}
    for head_lr in (None, 0.1):
        model, tok, state = _fresh(tiny_model_dir)
        seq = tok("Q: 2 + 2?\nA: 2 + 2 = 4. Answer: 4\n", add_special_tokens=False).input_ids
        cfg = QuietStarSettings(steps=1, warmup=0, lr=1e-3, head_lr=head_lr, seq_len=32, grad_norm_every=0)
        train_quietstar(model, state, batches([(seq, seq)] * 4, 2, tok.pad_token_id, 0), cfg, tok.pad_token_id)
        runs[head_lr] = (model, state)
    (m1, s1), (m2, s2) = runs[None], runs[0.1]
    # the first step's gradients do not depend on the head's lr (its last layer starts at zero)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert torch.equal(s1.thought_embedding, s2.thought_embedding)
    w1, w2 = s1.head[-1].weight, s2.head[-1].weight
    assert w1.abs().max() > 0
    assert torch.allclose(w2, 100 * w1, rtol=1e-3, atol=1e-9)  # Adam's first step is lr · g/|g|, per entry


def test_pause_control_trains_without_reinforce(tiny_model_dir):
    model, tok, state = _fresh(tiny_model_dir)
    seq = tok("Q: 2 + 2?\nA: 2 + 2 = 4. Answer: 4\n", add_special_tokens=False).input_ids
    cfg = QuietStarSettings(steps=3, warmup=1, lr=1e-3, seq_len=32, thoughts="pause")
    hist = train_quietstar(model, state, batches([(seq, seq)] * 4, 2, tok.pad_token_id, 0), cfg, tok.pad_token_id)
    assert all("policy_loss" not in h for h in hist)


def test_plain_generation_never_emits_thought_tokens(tiny_model_dir):
    model, tok, state = _fresh(tiny_model_dir)
    with torch.no_grad():
        for i in state.tokens.ids:  # make them the favourite next token everywhere
            model.lm_head.weight[i] = model.get_decoder()(input_ids=torch.tensor([[5]])).last_hidden_state[0, 0] * 50
    model.generation_config.suppress_tokens = list(state.tokens.ids)
    outs = greedy_complete(model, tok, ["Q: 1 + 1?\nA:", "Records: a=1."], 6, 2)
    assert not any(t in o for o in outs for t in ("<|startthought|>", "<|endthought|>"))


def test_paired_standard_error_of_the_change():
    from agent_forge_core.quietstar.metrics import paired_se

    assert paired_se([0.1, 0.1, 0.1]) == pytest.approx(0.0, abs=1e-15)  # the same shift on every token is no noise
    assert paired_se([1.0, -1.0, 1.0, -1.0]) == pytest.approx((4 / 3) ** 0.5 / 2)  # s / sqrt(n), s² = 4/3


def test_eval_thoughts_off_leaves_checkpoint_keys_unchanged():
    assert "thoughts" not in EvalSettings().identity()
    assert EvalSettings(thoughts=True).identity()["thoughts"] is True


def test_stage_writes_model_with_thought_state_and_metrics(tiny_settings, capsys):
    s = tiny_settings(*QS, "eval.thoughts=true")
    assert plan(s) == ["import", "quietstar"]
    ctx = make_context(s)
    base = run_stage_on("import", [], ctx)
    res = run_stage_on("quietstar", base.outputs, ctx)
    (key,) = res.outputs
    folder = ctx.store.get(key)
    for f in ("quietstar.safetensors", "quietstar.json", "sidecars.json", "quietstar_history.json", "quietstar.png"):
        assert (folder / f).is_file(), f
    info = ctx.store.manifest(key).info
    tm = info["thought_metrics"]
    assert {"text_nll", "text_nll_thought", "text_hard_nll_thought", "answer_prob_thought", "mix_mean"} <= set(tm)
    assert tm["text_hard_nll"] >= tm["text_nll"]
    # the report's table: thought mode against plain mode on the same tokens, with the paired standard error
    (table,) = info["tables"].values()
    first = table["rows"][0]
    assert first["measure"] == "held-out text NLL" and first["plain"] == tm["text_nll"]
    assert first["change"] == f"{tm['text_nll_thought'] - tm['text_nll']:+.4f} ± {tm['text_nll_change_se']:.4f}"
    assert set(info["thought_eval"]) >= {"perplexity", "arithmetic", "arithmetic_nll"}
    assert info["departures"]["n_thought"] == {"ours": 2, "reference": 9}
    assert len(json.loads((folder / "quietstar_history.json").read_text())) == 4
    # plain mode: an ordinary transformers checkpoint, thought tokens suppressed
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(folder)
    assert sorted(plain.generation_config.suppress_tokens) == sorted(info["tokens"][k] for k in ("start_id", "end_id"))
    model, _ = load_model(str(folder))
    state, _ = ThoughtState.load(folder, model)
    assert state.embeddings()[0].abs().sum() > 0
    # resume: the stored checkpoint is reused
    assert run_stage_on("quietstar", base.outputs, ctx).reused
    # the CLI's eval in thought mode; a checkpoint without thought state is refused with the fix
    from flows.cli import main

    common = ["--set", f"store.url={s.store.url}", "--set", "eval.n_examples=2", "--set", "eval.ppl_tokens=128",
              "--set", "eval.ppl_window=64", "--set", "eval.max_new_tokens=4", "--set", "eval.thoughts=true"]
    capsys.readouterr()
    assert main(["eval", key, *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"perplexity", "perplexity_thought", "arithmetic_thought"} <= set(out)
    assert main(["eval", base.outputs[0], *common]) == 2
    assert "carries no Quiet-STaR state" in capsys.readouterr().err


def test_failed_gate_writes_nothing(tiny_settings):
    s = tiny_settings(*QS, "quietstar.gates={perplexity: -0.5}")
    ctx = make_context(s)
    base = run_stage_on("import", [], ctx)
    with pytest.raises(GateFailed, match="perplexity"):
        run_stage_on("quietstar", base.outputs, ctx)
    from agent_forge_core.stages.plan import output_keys
    from agent_forge_core.stages.registry import get_stage

    (key,) = output_keys(get_stage("quietstar"), base.outputs, s).values()
    assert not ctx.store.exists(key)


def test_bitnet_after_quietstar_carries_the_head_in_float(tiny_settings):
    s = tiny_settings(*QS, "bitnet.enabled=true", "bitnet.steps=2", "bitnet.warmup=1", "bitnet.batch_size=2",
                      "bitnet.max_len=32", "bitnet.measure_ptq=false", "bitnet.gates={}")
    assert plan(s) == ["import", "quietstar", "bitnet"]
    ctx = make_context(s)
    qs = run_stage_on("quietstar", run_stage_on("import", [], ctx).outputs, ctx)
    bn = run_stage_on("bitnet", qs.outputs, ctx)
    folder = ctx.store.get(bn.outputs[0])
    assert (folder / "quietstar.safetensors").is_file() and (folder / "bitnet.json").is_file()
    model, tok = load_model(str(folder))
    state, meta = ThoughtState.load(folder, model)
    assert state.head[0].weight.dtype == torch.float32
    ids = tok("Q: 2 + 3?\nA:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(ThoughtLM(model, state, meta["n_thought"])(ids).logits).all()
