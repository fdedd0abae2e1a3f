"""Quiet-STaR's parallel thought forward against plain sequential forwards, on the tiny model."""

import pytest
import torch

from agent_forge_core.model_io import load_model
from agent_forge_core.quietstar.engine import think
from agent_forge_core.quietstar.loss import centred, quietstar_loss, rewards
from agent_forge_core.quietstar.mask import base_mask, one_shot_mask
from agent_forge_core.quietstar.state import ThoughtState
from agent_forge_core.quietstar.tokens import prepare_tokens

M, T = 2, 2  # sampled thought tokens, talk tokens


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    tokens = prepare_tokens(model, tok)
    torch.manual_seed(0)
    state = ThoughtState.initial(model, tok, tokens)
    return model.eval(), tok, state


def _with_attention(model, impl):
    model.set_attn_implementation(impl)
    return model


def _ids(tok, length=10, rows=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, len(tok) - 8, (rows, length), generator=g)


def test_tokens_added_and_vocabulary_padded_to_64_when_none_are_free(tiny):
    model, tok, state = tiny
    assert not state.tokens.reused  # the tiny tokenizer has one free special token, not two
    assert model.get_input_embeddings().weight.shape[0] % 64 == 0
    assert tok.convert_ids_to_tokens(list(state.tokens.ids)) == ["<|startthought|>", "<|endthought|>"]


def test_tokens_reused_when_the_tokenizer_has_two_free_special_tokens(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    rows = model.get_input_embeddings().weight.shape[0]
    tok.add_special_tokens({"additional_special_tokens": ["<unused_a>", "<unused_b>"]})
    model.resize_token_embeddings(len(tok))
    t = prepare_tokens(model, tok)
    assert t.reused and (t.start, t.end) == ("<unused_a>", "<unused_b>")
    assert model.get_input_embeddings().weight.shape[0] == rows + 2  # unchanged by prepare_tokens


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_parallel_thoughts_equal_sequential_forwards(tiny, impl):
    """Every column j and pass k: the parallel engine's hidden state and logits equal a plain forward over
    x[:j+1] + <start> + c_j + <end> + x[j+1:j+s] at position j + k."""
    model, tok, state = tiny
    _with_attention(model, impl)
    x = _ids(tok, rows=1)
    length = x.shape[1]
    forced = torch.randint(5, 200, (1, length, M), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        th = think(model, state, x, n_thought=M, n_talk=T, sampler="forced", forced=forced, keep_steps=True)
        emb = model.get_input_embeddings().weight.clone()
        head = model.lm_head.weight.clone()  # tied: writing the thought rows changes these two logits too
        state.write_embeddings(model)  # the plain forward reads the thought embeddings from the table
        worst = 0.0
        for j in range(length):
            talk = x[0, j + 1 : j + T].tolist()
            seq = x[0, : j + 1].tolist() + [state.tokens.start_id] + forced[0, j].tolist() + [state.tokens.end_id] + talk
            h = model.get_decoder()(input_ids=torch.tensor([seq])).last_hidden_state[0]
            logits = h @ head.T
            worst = max(worst, (th.base_hidden[0, j] - h[j]).abs().max().item())
            for k in range(1, len(seq) - j):
                worst = max(worst, (th.step_hidden[k - 1][0, j] - h[j + k]).abs().max().item())
            for s in range(len(talk) + 1):
                worst = max(worst, (th.talk_logits[s][0, j] - logits[j + M + 2 + s]).abs().max().item())
        model.get_input_embeddings().weight.copy_(emb)
    assert worst <= 1e-5, worst


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_cached_incremental_passes_equal_one_shot_with_the_4d_mask(tiny, impl):
    model, tok, state = tiny
    _with_attention(model, impl)
    x = _ids(tok, length=8, rows=2, seed=3)
    n, length = x.shape
    forced = torch.randint(5, 200, (n, length, M), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        th = think(model, state, x, n_thought=M, n_talk=T, sampler="forced", forced=forced, keep_steps=True)
        start, end = state.embeddings()
        emb = model.get_input_embeddings()
        blocks = [emb(x), start.expand(n, length, -1)] + [emb(forced[..., i]) for i in range(M)] + \
                 [end.expand(n, length, -1)] + [emb(torch.cat([x[:, s:], x.new_zeros(n, s)], 1)) for s in range(1, T)]
        steps = len(blocks) - 1
        mask = one_shot_mask(base_mask(torch.ones_like(x), emb.weight.dtype), steps)
        pos = torch.arange(length).expand(n, length)
        positions = torch.cat([pos + k for k in range(steps + 1)], dim=1)
        h = model.get_decoder()(inputs_embeds=torch.cat(blocks, 1), attention_mask=mask, position_ids=positions).last_hidden_state
    assert (th.base_hidden - h[:, :length]).abs().max() <= 1e-5
    for k in range(1, steps + 1):
        assert (th.step_hidden[k - 1] - h[:, k * length : (k + 1) * length]).abs().max() <= 1e-5


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_right_padded_rows_equal_unpadded(tiny, impl):
    model, tok, state = tiny
    _with_attention(model, impl)
    x = _ids(tok, length=9, rows=1, seed=5)
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones_like(x), torch.zeros(1, 4, dtype=torch.long)], 1)
    forced = torch.randint(5, 200, (1, 13, M), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a = think(model, state, x, n_thought=M, n_talk=T, sampler="forced", forced=forced[:, :9])
        b = think(model, state, padded, mask, n_thought=M, n_talk=T, sampler="forced", forced=forced)
    assert (a.base_logits - b.base_logits[:, :9]).abs().max() <= 1e-5
    for s in range(T):
        # talk step s of the last columns feeds padding in both; compare the columns whose talk inputs are real
        cols = 9 - s
        assert (a.mixed_logits[s][:, :cols] - b.mixed_logits[s][:, :cols]).abs().max() <= 1e-5


def test_thought_positions_continue_from_the_token(tiny):
    """Thought k of column j is at RoPE position j + k: shifting every position by one changes the result
    unless the whole sequence moves (checked against a forward at explicit positions)."""
    model, tok, state = tiny
    _with_attention(model, "eager")
    x = _ids(tok, length=6, rows=1, seed=7)
    forced = torch.randint(5, 200, (1, 6, M), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        th = think(model, state, x, n_thought=M, n_talk=1, sampler="forced", forced=forced, keep_steps=True)
        state.write_embeddings(model)
        j = 3
        seq = x[0, : j + 1].tolist() + [state.tokens.start_id] + forced[0, j].tolist()
        dec = model.get_decoder()
        right = dec(input_ids=torch.tensor([seq]), position_ids=torch.arange(len(seq))[None]).last_hidden_state[0]
        wrong = dec(input_ids=torch.tensor([seq]), position_ids=torch.cat([torch.arange(j + 1), torch.arange(j + 2, j + 2 + M + 1)])[None]).last_hidden_state[0]
    assert (th.step_hidden[0][0, j] - right[j + 1]).abs().max() <= 1e-5
    assert (th.step_hidden[0][0, j] - wrong[j + 1]).abs().max() > 1e-3


def test_at_init_mixed_logits_are_the_base_logits_bit_for_bit(tiny):
    model, tok, state = tiny
    _with_attention(model, "sdpa")
    x = _ids(tok, length=12, rows=2, seed=9)
    with torch.no_grad():
        th = think(model, state, x, n_thought=M, n_talk=T, n_passes=2, generator=torch.Generator().manual_seed(0),
                   policy_temperature=3.0)
        for s in range(T):
            assert torch.equal(th.mixed_logits[s], torch.roll(th.base_logits, -s, dims=1))
            assert torch.count_nonzero(th.mix[s]) == 0
        _, stats, _ = quietstar_loss(th, T, 2)
    assert stats["loss_talk"] == pytest.approx(stats["loss_base"], rel=1e-3)  # same NLLs, on shifted targets
    assert stats["reward_mean"] == 0.0


def test_thought_tokens_are_never_sampled(tiny):
    model, tok, state = tiny
    # make the thought tokens the model's favourite continuation: without the mask they would be sampled
    x = _ids(tok, length=10, rows=2, seed=11)
    lm = model.lm_head.weight
    saved = lm.data.clone()
    with torch.no_grad():
        for i in state.tokens.ids:
            lm[i] = lm.mean(0) * 0 + 50.0
        for sampler in ("gumbel", "greedy"):
            th = think(model, state, x, n_thought=3, n_talk=1, n_passes=2, sampler=sampler,
                       generator=torch.Generator().manual_seed(0))
            assert not torch.isin(th.thought_ids, torch.tensor(state.tokens.ids)).any()
        lm.data.copy_(saved)


def test_seeded_reruns_give_identical_thoughts_and_losses(tiny):
    model, tok, state = tiny
    x = _ids(tok, length=10, rows=2, seed=12)
    runs = []
    for _ in range(2):
        with torch.no_grad():
            th = think(model, state, x, n_thought=M, n_talk=T, n_passes=2, generator=torch.Generator().manual_seed(5),
                       policy_temperature=3.0)
            runs.append((th.thought_ids, quietstar_loss(th, T, 2)[1]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    with torch.no_grad():
        other = think(model, state, x, n_thought=M, n_talk=T, n_passes=2, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other.thought_ids, runs[0][0])


def test_reward_centring_and_clamp_by_hand():
    r = torch.tensor([[1.0, -2.0], [3.0, 0.0], [0.5, 0.5], [-0.5, 1.5]])  # rows: (col 0, pass 0), (col 0, pass 1), ...
    adv = centred(r, 2, remove_negative=True)
    assert adv.tolist() == [[0.0, 0.0], [1.0, 1.0], [0.5, 0.0], [0.0, 0.5]]
    assert centred(r, 2, remove_negative=False).tolist() == [[-1.0, -1.0], [1.0, 1.0], [0.5, -0.5], [-0.5, 0.5]]


def test_reinforce_estimator_matches_the_analytic_gradient_on_a_toy_policy():
    """E_c[r(c) ∇ log p(c)] with c ~ softmax(θ) equals ∇ Σ_c p(c) r(c); the estimator as the loss builds it
    (advantage from a baseline over passes, no clamp: clamping is the reference's deliberate bias)."""
    torch.manual_seed(0)
    theta = torch.randn(5, requires_grad=True)
    reward = torch.tensor([1.0, -0.5, 2.0, 0.0, 0.3])
    analytic = torch.autograd.grad((torch.softmax(theta, 0) * reward).sum(), theta)[0]
    n, passes = 40000, 4
    c = torch.multinomial(torch.softmax(theta.detach(), 0), n * passes, replacement=True)
    r = reward[c].view(n, passes).reshape(-1, 1)
    adv = centred(r.view(-1, 1), passes, remove_negative=False) * passes / (passes - 1)  # unbiased leave-one-in
    logp = torch.log_softmax(theta, 0)[c]
    est = torch.autograd.grad((adv[:, 0] * logp).mean(), theta)[0]
    assert torch.allclose(est, analytic, atol=0.03), (est, analytic)


def test_reward_is_the_log_likelihood_gain_summed_over_talk_steps(tiny):
    model, tok, state = tiny
    x = _ids(tok, length=8, rows=1, seed=13)
    with torch.no_grad():
        for p in state.head[-1].parameters():
            p.normal_(0, 0.5)  # a non-trivial mix
        th = think(model, state, x, n_thought=M, n_talk=T, generator=torch.Generator().manual_seed(0), policy_temperature=3.0)
        nn = torch.nn.functional.cross_entropy
        j = 2
        expect = sum(nn(th.base_logits[0, j + s], x[0, j + s + 1]) - nn(th.mixed_logits[s][0, j], x[0, j + s + 1])
                     for s in range(T))
        r, _ = rewards(th, T)
        torch.nn.init.zeros_(state.head[-1].weight)
    assert r[0, j].item() == pytest.approx(expect.item(), abs=1e-5)
    assert r.shape[1] == 8 - T
