"""Expert vectors (Transformer² SVF) on the tiny model: the SVF algebra, expert files, training, CEM, dispatch,
the driving generator and the stage end to end."""
import json
import re

import pytest
import torch

from agent_forge_core.context import make_context
from agent_forge_core.errors import ConfigError
from agent_forge_core.evals.tasks import TASK_NAMES, get_task
from agent_forge_core.experts.cem import cem
from agent_forge_core.experts.dispatch import ClassifyDomain, LinearProbe, classify_prompt
from agent_forge_core.experts.domains import get_domain
from agent_forge_core.experts.expert import Expert, mix
from agent_forge_core.experts.settings import ExpertTraining
from agent_forge_core.experts.svf import SVF, Factors, compose, decompose, parameter_count, z_grad
from agent_forge_core.experts.train import train_expert
from agent_forge_core.experts.two_pass import TwoPass
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.plan import plan
from agent_forge_core.stages.runner import run_stage_on

SMOLLM2_135M = {"hidden": 576, "intermediate": 1536, "kv": 192, "layers": 30}


def _w(out=24, inp=16, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


def test_uniform_z_gives_back_w_and_the_reference_init_too():
    W = _w()
    f = decompose(W)
    for c in (1.0, 0.3, float(torch.sigmoid(torch.tensor(0.1)))):
        assert (compose(f, torch.full((f.rank,), c)) - W).abs().max() < 1e-5


def test_sign_flipped_factors_give_the_same_w_prime():
    W = _w(seed=1)
    f = decompose(W)
    z = torch.rand(f.rank, generator=torch.Generator().manual_seed(2))
    flip = torch.tensor([1.0, -1.0] * (f.rank // 2))
    g = Factors(f.U * flip, f.S, f.Vh * flip[:, None])
    assert not torch.allclose(g.U, f.U)
    assert (compose(g, z) - compose(f, z)).abs().max() < 1e-5


def test_svf_gradient_matches_autograd():
    W = _w(seed=3)
    f = decompose(W)
    z = torch.rand(f.rank, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    target = torch.randn(W.shape, generator=torch.Generator().manual_seed(5))
    Wp = compose(f, z)
    loss = ((Wp - target) ** 2).sum() + Wp.sin().sum()
    loss.backward()
    G = 2 * (Wp - target) + Wp.cos()
    assert torch.allclose(z_grad(f, z.detach(), G.detach()), z.grad, atol=1e-5, rtol=1e-4)


def test_parameter_counts_of_smollm2():
    h, i, kv, n = SMOLLM2_135M.values()
    mlp = {f"{l}.{m}": s for l in range(n) for m, s in (("gate", (i, h)), ("up", (i, h)), ("down", (h, i)))}
    attn = {f"{l}.{m}": s for l in range(n) for m, s in (("q", (h, h)), ("k", (kv, h)), ("v", (kv, h)), ("o", (h, h)))}
    assert parameter_count(mlp) == 51_840
    assert parameter_count({**mlp, **attn}) == 97_920


def test_the_svf_of_a_model_recomputed_at_load_gives_the_same_weights(tiny_model_dir, tmp_path):
    model, _ = load_model(str(tiny_model_dir))
    svf = SVF(model, "mlp")
    assert len(svf.names) == 2 * 3 and svf.n_values == sum(min(s) for s in svf.shapes.values())
    z = {n: torch.rand(f.rank, generator=torch.Generator().manual_seed(k)) for k, (n, f) in enumerate(svf.factors.items())}
    e = Expert("arithmetic", z)
    e.save(tmp_path, svf)
    loaded = Expert.load(tmp_path / "experts" / "arithmetic.safetensors")
    again = SVF(load_model(str(tiny_model_dir))[0], "mlp")  # a fresh SVD
    loaded.verify(again)
    for n in svf.names:
        assert (compose(again.factors[n], loaded.z[n]) - compose(svf.factors[n], e.stored().z[n])).abs().max() < 1e-5
    svf.apply(loaded.z)
    svf.apply(None)
    assert all(torch.equal(svf.params[n], svf.base[n]) for n in svf.names)  # "no expert" is W itself


def test_an_expert_of_another_base_is_refused(tiny_model_dir, tmp_path):
    model, _ = load_model(str(tiny_model_dir))
    svf = SVF(model, "mlp")
    z = {n: torch.rand(f.rank, generator=torch.Generator().manual_seed(k)) for k, (n, f) in enumerate(svf.factors.items())}
    Expert("recall", z).save(tmp_path, svf)
    with torch.no_grad():
        svf.params[svf.names[0]].mul_(1.5)
    other = SVF(model, "mlp")
    with pytest.raises(ValueError, match="base checkpoint differs"):
        Expert.load(tmp_path / "experts" / "recall.safetensors").verify(other)
    with pytest.raises(ValueError, match="other model or target set"):
        SVF(model, "all").check(z)


def test_mixing_is_linear_and_a_one_hot_alpha_gives_the_expert():
    a = Expert("a", {"w": torch.tensor([0.2, 0.4])})
    b = Expert("b", {"w": torch.tensor([0.6, 0.8])})
    assert torch.equal(mix([a, b], [1, 0])["w"], a.z["w"]) and torch.equal(mix([a, b], [0, 1])["w"], b.z["w"])
    assert torch.allclose(mix([a, b], [0.5, 0.25])["w"], 0.5 * a.z["w"] + 0.25 * b.z["w"])
    assert mix([a, b], [0, 0]) is None  # W'(0) is undefined: the base weights


def test_cem_finds_a_planted_optimum_and_breaks_ties_by_log_likelihood():
    target = torch.tensor([0.8, 0.1, 0.5])

    def fitness(alpha):
        d = (torch.tensor(alpha) - target).abs().max().item()
        return (1.0 if d < 0.25 else 0.0), -d  # accuracy plateaus; the log-likelihood ranks inside it

    alpha, score, hist = cem(fitness, 3, population=16, elite_ratio=0.25, generations=12, seed=0)
    assert score[0] == 1.0 and (torch.tensor(alpha) - target).abs().max() < 0.1
    assert [h["best_loglik"] for h in hist] == sorted(h["best_loglik"] for h in hist)


def test_driving_answers_are_exact_and_its_splits_use_their_own_families():
    t = get_task("driving")
    fams = {s: {e.family for e in t.examples(s, 60, 0)} for s in ("train", "validation", "test")}
    assert not fams["train"] & fams["test"] and not fams["validation"] & fams["test"]
    for ex in t.examples("test", 200, 1):
        assert t.check(ex.target, ex)
        if "m/s^2" in ex.prompt:
            kmh, t_r, a = (int(re.search(rx, ex.prompt).group(1)) for rx in (r"(\d+) km/h", r"(\d+) s\b", r"(\d+) m/s\^2"))
            v = kmh / 3.6
            assert int(ex.answer) == int(v * t_r + v * v / (2 * a) + 0.5)
        for step in re.findall(r"(\d+) ([+\-*]) (\d+) = ([\d.]+)\.", ex.target):
            a_, op, b_, c_ = step
            assert eval(f"{a_} {op} {b_}") == float(c_)
    stop = next(e for e in t.examples("train", 50, 0) if e.answer.isdigit())
    assert not t.check(stop.target.replace(f"Answer: {stop.answer}", f"Answer: {int(stop.answer) + 1}"), stop)
    assert "driving" not in TASK_NAMES  # opt-in: default evals and cached keys unchanged


def _tiny(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    return model.eval(), tok


@torch.no_grad()
def _text_nll(model, tok, texts):
    from agent_forge_core.experts.train import pack, sequence_logprobs

    ids, mask, lab = pack(tok, [("", t) for t in texts], "cpu")
    s, c, _ = sequence_logprobs(model, ids, mask, lab)
    return float(-s.sum() / c.sum())


def test_an_nll_expert_lowers_held_out_nll_and_leaves_the_base_weights(tiny_model_dir):
    model, tok = _tiny(tiny_model_dir)
    svf = SVF(model, "all")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lang = get_domain("language")
    held = lang.texts("validation", 8, 300, 0)
    base_nll = _text_nll(model, tok, held)
    cfg = ExpertTraining(target="all", lr=1.0, steps=12, batch_size=4, text_chars=300)
    expert, hist = train_expert(model, tok, svf, lang, cfg, shots=0, seed=0)
    assert expert.meta["objective"] == "nll" and len(hist) == 12
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # left with W, exactly
    svf.apply(expert.z)
    tuned = _text_nll(model, tok, held)
    svf.apply(None)
    # 6.241 -> 6.211 measured: the untrained tiny model is near uniform (ln 512 = 6.238), and SVF only rescales
    # its existing singular directions; the held-out windows are fixed, so this is no sampling noise
    assert tuned < base_nll - 0.015, (base_nll, tuned)


def test_reinforce_with_positive_rewards_raises_the_likelihood_of_the_greedy_answers(tiny_model_dir):
    """r = +1 everywhere: J = -Σ log π(greedy answer), so the expert must make its own answers more likely."""
    from agent_forge_core.evals.suite import greedy_complete, target_nll

    class Always:
        name, checkable = "always", True

        def __init__(self):
            self.task = self

        def examples(self, split, n, shots, seed):
            return get_domain("recall").examples(split, n, shots, seed)

        @staticmethod
        def check(completion, ex):
            return True

    model, tok = _tiny(tiny_model_dir)
    svf = SVF(model, "mlp")
    dom = Always()
    prompts = [p for p, _ in dom.examples("train", 8, 1, 0)]  # the first training batch
    answers = greedy_complete(model, tok, prompts, 8, 8)
    base = target_nll(model, tok, list(zip(prompts, answers)), 8)
    cfg = ExpertTraining(objective="reinforce", lr=0.3, steps=6, batch_size=8, max_new_tokens=8)
    expert, hist = train_expert(model, tok, svf, dom, cfg, shots=1, seed=0)
    assert expert.meta["objective"] == "reinforce" and all(h["reward_share"] == 1.0 for h in hist)
    svf.apply(expert.z)
    after = target_nll(model, tok, list(zip(prompts, answers)), 8)
    svf.apply(None)
    assert after < base - 0.02, (base, after)


def test_a_greedy_answer_stopped_by_eos_keeps_the_eos_as_its_last_action(tiny_model_dir):
    """An empty answer must still carry a token (its EOS), or a −1 reward has nothing to push down."""
    from agent_forge_core.experts.train import pack, with_stop

    _, tok = _tiny(tiny_model_dir)
    assert with_stop(tok, "", 8) == tok.eos_token and with_stop(tok, " 12", 8) == " 12" + tok.eos_token
    assert with_stop(tok, " 12\n", 8) == " 12\n"  # stopped by its newline, which the text keeps
    assert with_stop(tok, " a b c d e f g h i j", 8) == " a b c d e f g h i j"  # ran out of tokens: no stop
    _, _, labels = pack(tok, [("Q: 2+2?\nA:", with_stop(tok, "", 8))], "cpu")
    assert labels[labels != -100].tolist() == [tok.eos_token_id]


def test_auto_objective_falls_back_to_nll_when_every_reward_is_negative(tiny_model_dir):
    model, tok = _tiny(tiny_model_dir)
    svf = SVF(model, "mlp")
    cfg = ExpertTraining(steps=2, batch_size=4, max_new_tokens=6)
    expert, hist = train_expert(model, tok, svf, get_domain("arithmetic"), cfg, shots=1, seed=0)
    assert hist[0]["reward_share"] == 0.0  # an untrained model never answers right
    assert expert.meta["objective"] == "nll" and "rewards ~all -1" in expert.meta["objective_why"]


def test_the_linear_dispatcher_tells_held_out_domains_apart(tiny_model_dir):
    from agent_forge_core.experts.dispatch import dispatch_accuracy, linear_router, pooled_features

    model, tok = _tiny(tiny_model_dir)
    domains = [get_domain(d) for d in ("arithmetic", "recall", "instruction", "language", "driving")]
    names = [d.name for d in domains]
    train = [q for d in domains for q in d.queries("train", 24, 1, 0)]
    labels = torch.tensor([i for i in range(len(domains)) for _ in range(24)])
    probe = LinearProbe.fit(pooled_features(model, tok, train), labels, len(domains), margin=None)  # domains only
    acc = dispatch_accuracy(linear_router(model, tok, names, probe), {d.name: d.queries("test", 16, 1, 0) for d in domains})
    assert acc["all"] >= 0.95, acc  # test-split families: wordings the probe never saw


def test_the_linear_probe_leaves_far_queries_on_the_base_weights():
    from agent_forge_core.experts.dispatch import OTHER

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 6
    x = torch.cat([c + torch.randn(40, 16, generator=g) for c in centres])
    y = torch.arange(3).repeat_interleave(40)
    probe = LinearProbe.fit(x, y, 3)
    near = torch.cat([c + torch.randn(20, 16, generator=g) * 0.8 for c in centres])
    far = centres.mean(0) + torch.randn(20, 16, generator=g) * 30
    assert probe.predict(near).tolist() == torch.arange(3).repeat_interleave(20).tolist()
    assert (probe.predict(far) == -1).all()
    assert (LinearProbe.fit(x, y, 3, margin=None).predict(far) >= 0).all()  # without the rule: a domain each
    again = LinearProbe.from_dict(json.loads(json.dumps(probe.as_dict())))
    assert torch.equal(again.predict(far), probe.predict(far)) and OTHER == "base"


def test_classification_data_is_labelled_and_checked_exactly():
    dom = ClassifyDomain([get_domain("arithmetic"), get_domain("language")], 4)
    rows = dom.examples("train", 8, 1, 0)
    assert {ex.answer for _, ex in rows} == {"arithmetic", "language"}
    prompt, ex = rows[0]
    assert prompt == classify_prompt(ex.prompt, ["arithmetic", "language", "other"]) and prompt.endswith("Kind:")
    arith = next(ex for _, ex in rows if ex.answer == "arithmetic")
    assert dom.check(" arithmetic\n", arith) and not dom.check(" language", arith)


def test_the_classification_expert_learns_the_router_s_own_score(tiny_model_dir):
    """nll on "prompt → label" is the cross-entropy of the router's label scores: it must fall on held-out prompts."""
    from agent_forge_core.experts.dispatch import OTHER_LABEL, label_scores, train_classifier
    from agent_forge_core.experts.settings import ExpertsSettings

    model, tok = _tiny(tiny_model_dir)
    svf = SVF(model, "mlp")
    domains = [get_domain("arithmetic"), get_domain("language")]
    labels = ["arithmetic", "language", OTHER_LABEL]
    held = [(classify_prompt(q, labels), i) for i, d in enumerate(domains) for q in d.queries("validation", 8, 1, 0)]

    def xent():
        lp = torch.log_softmax(label_scores(model, tok, [p for p, _ in held], labels), -1)
        return float(-lp[torch.arange(len(held)), torch.tensor([i for _, i in held])].mean())

    base = xent()
    cfg = ExpertsSettings(dispatch_train=16, train={"lr": 1.0, "steps": 12, "batch_size": 8})
    expert, hist = train_classifier(model, tok, svf, domains, cfg, shots=1, seed=0)
    assert expert.domain == "_dispatch" and expert.meta["objective"] == "nll" and len(hist) == 12
    svf.apply(expert.z)
    tuned = xent()
    svf.apply(None)
    # 0.994 -> 0.956 measured (ln 3 = 1.099: the untrained model barely tells labels apart, and SVF only rescales
    # its singular directions); fixed prompts and seed, so no sampling noise
    assert tuned < base - 0.025, (base, tuned)


EXPERTS = ["cognate.enabled=false", "experts.enabled=true", "experts.train.steps=2", "experts.train.batch_size=4",
           "experts.train.max_new_tokens=8", "experts.matrix_examples=8", "experts.dispatch_train=16",
           "experts.dispatch_examples=8"]


def test_the_stage_writes_experts_beside_the_unchanged_base_and_evaluates_two_pass(tiny_settings):
    s = tiny_settings(*EXPERTS)
    assert plan(s) == ["import", "experts"]
    ctx = make_context(s)
    base = run_stage_on("import", [], ctx)
    res = run_stage_on("experts", base.outputs, ctx)
    (key,) = res.outputs
    folder = ctx.store.get(key)
    info = ctx.store.manifest(key).info
    names = ["arithmetic", "recall", "instruction", "language"]
    assert sorted(p.name for p in (folder / "experts").iterdir()) == sorted(f"{d}.safetensors" for d in names)
    assert set(info["matrix"]) == {"base", *names} and info["values_per_expert"] == 2 * (64 + 64 + 64)
    assert info["dispatch_accuracy"]["linear"]["all"] >= 0.9
    tables = {t.split(" ")[0]: rows for t, rows in info["tables"].items()}  # the forge report's tables
    dispatch, matrix = tables["dispatch"]["rows"], tables["expert"]["rows"]
    assert dispatch[0]["mode"] == "linear" and dispatch[0]["all"] == info["dispatch_accuracy"]["linear"]["all"]
    assert matrix[0] == {"weights": "base", **info["matrix"]["base"]}
    m0, _ = load_model(str(ctx.store.get(base.outputs[0])))
    m1, tok = load_model(str(folder))
    p0 = dict(m0.named_parameters())
    assert all(torch.equal(p, p0[n]) for n, p in m1.named_parameters())  # experts are sidecars, not baked in
    two = TwoPass(m1, tok, folder)
    metrics, routed = two.evaluate(s.eval)
    # the stage answers through the runtime's generator and scores targets apart; the plain suite scores them on the
    # prompts' cache (`answer_and_score`): the same NLLs to float rounding
    assert metrics == pytest.approx(res.metrics[key], rel=1e-6)
    assert sum(routed["arithmetic"].values()) == s.eval.n_examples
    assert run_stage_on("experts", base.outputs, ctx).reused


def test_two_pass_with_identity_experts_scores_as_the_suite(tiny_settings, tmp_path):
    """Uniform z gives W back (within SVD round-off), so routing changes no accuracy and perplexity only in float noise."""
    from agent_forge_core.evals.suite import evaluate
    from agent_forge_core.model_io import save_model

    s = tiny_settings(*EXPERTS)
    model, tok = load_model(str(s.model.source))
    svf = SVF(model, "mlp")
    folder = save_model(model, tok, tmp_path / "m")
    files = {d: Expert(d, svf.uniform(0.5)).save(folder, svf) for d in ("arithmetic", "recall", "instruction")}
    (folder / "experts.json").write_text(json.dumps({"target": "mlp", "files": files}))
    probe = LinearProbe(torch.zeros(64), torch.ones(64), torch.zeros(3, 64), torch.tensor([0.0, 1.0, 0.0]))
    (folder / "dispatcher.json").write_text(json.dumps({"mode": "linear", "linear": probe.as_dict()}))
    two, plain = TwoPass(model, tok, folder).evaluate(s.eval)[0], evaluate(model, tok, s.eval)
    for k, v in plain.items():
        assert abs(two[k] - v) <= 1e-4 * max(1.0, abs(v)), k


def test_the_runner_measures_answers_nlls_and_perplexity_with_the_routed_expert(tiny_settings, tmp_path):
    """Every measurement of a checkpoint with experts is made with the expert its dispatcher picks, the target NLLs
    too (the experts stage measured NLLs routed and compression after it plain: a gate failure of the evaluation's)."""
    from agent_forge_core.evals.suite import evaluate
    from agent_forge_core.model_io import save_model
    from agent_forge_core.stages.evaluation import evaluate_built

    s = tiny_settings(*EXPERTS)
    model, tok = load_model(str(s.model.source))
    svf = SVF(model, "mlp")
    folder = save_model(model, tok, tmp_path / "m")
    z = {n: torch.linspace(1.0, 0.1, len(v)) for n, v in svf.uniform().items()}  # a uniform z gives W back
    files = {d: Expert(d, z).save(folder, svf) for d in ("arithmetic", "recall", "instruction")}
    (folder / "experts.json").write_text(json.dumps({"target": "mlp", "files": files}))
    probe = LinearProbe(torch.zeros(64), torch.ones(64), torch.zeros(3, 64), torch.tensor([0.0, 1.0, 0.0]))
    (folder / "dispatcher.json").write_text(json.dumps({"mode": "linear", "linear": probe.as_dict()}))
    two = TwoPass(model, tok, folder)
    assert set(two.choose(["any query"] * 3)) == {"recall"} and two.choose_text("any text") == "recall"
    with two.applied("recall"):
        want = evaluate(model, tok, s.eval)
    plain = evaluate(model, tok, s.eval)
    built, direct = evaluate_built(model, tok, folder, make_context(s), "k"), two.evaluate(s.eval)[0]
    for k, v in want.items():
        assert built[k] == pytest.approx(v, rel=1e-5) and direct[k] == pytest.approx(v, rel=1e-5), k
    assert abs(built["recall_nll"] - plain["recall_nll"]) > 1e-3 and abs(built["perplexity"] - plain["perplexity"]) > 1e-3


def test_the_final_agent_s_probes_answer_with_the_dispatched_expert(tiny_settings, tmp_path):
    """Baking's probes on a checkpoint with experts (the final agent) answer as chat and serve do: each text with
    the expert its dispatcher picks."""
    from agent_forge_core.agent.generate import generate_batch
    from agent_forge_core.agent.runtime import Runtime
    from agent_forge_core.agent.settings import RuntimeSpec
    from agent_forge_core.baking.probes import answer_all
    from agent_forge_core.model_io import save_model

    s = tiny_settings(*EXPERTS)
    model, tok = load_model(str(s.model.source))
    svf = SVF(model, "mlp")
    folder = save_model(model, tok, tmp_path / "m")
    z = {n: torch.linspace(1.0, 0.1, len(v)) for n, v in svf.uniform().items()}
    files = {d: Expert(d, z).save(folder, svf) for d in ("arithmetic", "recall", "instruction")}
    (folder / "experts.json").write_text(json.dumps({"target": "mlp", "files": files}))
    probe = LinearProbe(torch.zeros(64), torch.ones(64), torch.zeros(3, 64), torch.tensor([0.0, 1.0, 0.0]))
    (folder / "dispatcher.json").write_text(json.dumps({"mode": "linear", "linear": probe.as_dict()}))
    rt = Runtime.open(folder, model, tok, s.agent, session="t", spec=RuntimeSpec(tools=[], instructions=False))
    texts = ["Q: Who are you?\nA:", "Q: What is 3 + 4?\nA:"]
    applied, weights = [], []  # the tiny model writes the same text either way: watch the weights it answers with
    real = rt.two_pass.applied
    probe_w = next(p for n, p in model.named_parameters() if n.endswith("mlp.down_proj.weight"))

    def spy(choice):
        applied.append(choice)
        return real(choice)

    rt.two_pass.applied = spy
    orig = model.forward

    def watched(*a, **k):
        weights.append(probe_w.detach().clone())
        return orig(*a, **k)

    model.forward = watched
    got = [g.text for g in answer_all(model, tok, rt, texts, 4)]
    model.forward = orig
    with real("recall"):  # where this probe sends every text
        want_w = probe_w.detach().clone()
        want = [g.text for g in generate_batch(model, tok, texts, {}, max_new_tokens=4)]
    assert applied == ["recall"] and got == want
    # the dispatcher reads the texts with the base weights, then every decoding step runs on the expert's
    base = probe_w.detach().clone()
    first = next(i for i, w in enumerate(weights) if not torch.equal(w, base))
    assert first > 0 and all(torch.equal(w, want_w) for w in weights[first:]) and not torch.equal(want_w, base)


def test_a_bitnet_input_is_composed_on_its_dequantized_weights_or_refused(tiny_settings):
    bitnet = ["bitnet.enabled=true", "bitnet.steps=2", "bitnet.warmup=1", "bitnet.batch_size=2", "bitnet.max_len=64",
              "bitnet.gates={}", "experts.gates={}"]
    ctx = make_context(tiny_settings(*EXPERTS, *bitnet))
    bn = run_stage_on("bitnet", run_stage_on("import", [], ctx).outputs, ctx)
    res = run_stage_on("experts", bn.outputs, ctx)
    assert "output is float" in ctx.store.manifest(res.outputs[0]).info["ternary_input"]
    ctx = make_context(tiny_settings(*EXPERTS, *bitnet, "experts.ternary_input=refuse"))
    with pytest.raises(ConfigError, match="experts.ternary_input=compose"):
        run_stage_on("experts", bn.outputs, ctx)


def test_a_failed_gate_writes_nothing(tiny_settings):
    from agent_forge_core.errors import GateFailed
    from agent_forge_core.stages.plan import output_keys
    from agent_forge_core.stages.registry import get_stage

    s = tiny_settings(*EXPERTS, "experts.gates={perplexity: -0.5}")
    ctx = make_context(s)
    base = run_stage_on("import", [], ctx)
    with pytest.raises(GateFailed, match="perplexity"):
        run_stage_on("experts", base.outputs, ctx)
    (key,) = output_keys(get_stage("experts"), base.outputs, s).values()
    assert not ctx.store.exists(key)


def test_the_agent_runtime_answers_each_message_with_its_dispatched_expert(tiny_settings):
    from agent_forge_core.agent.generate import generate_batch
    from agent_forge_core.agent.runtime import Runtime
    from agent_forge_core.agent.settings import RuntimeSpec

    s = tiny_settings(*EXPERTS, "experts.gates={}")
    ctx = make_context(s)
    res = run_stage_on("experts", run_stage_on("import", [], ctx).outputs, ctx)
    folder = ctx.store.get(res.outputs[0])
    model, tok = load_model(str(folder))
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    rt = Runtime.open(folder, model, tok, s.agent, session="t", spec=RuntimeSpec(tools=[], instructions=False))
    assert rt.two_pass is not None and rt.two_pass.mode == "linear"
    prompts = [p for d in ("arithmetic", "recall") for p in get_domain(d).queries("test", 3, 1, 0)]
    got = rt.completer(8)(model, tok, prompts)
    for p, g in zip(prompts, got):
        choice = rt.two_pass.choose_one(p)
        assert choice in ("arithmetic", "recall")  # the probe routes these
        rt.two_pass.svf.apply(rt.two_pass.z_of(choice))
        (want,) = generate_batch(model, tok, [p], {}, max_new_tokens=8, max_calls=rt.spec.max_calls)
        rt.two_pass.svf.apply(None)
        assert g == want.text
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


def test_expert_files_travel_with_later_stages(tmp_path):
    """Sidecars in a subfolder (experts/<domain>.safetensors) are carried and copied like top-level ones."""
    from agent_forge_core.formats.files import add_sidecars, carry_sidecars, copy_side_files

    src = tmp_path / "src"
    (src / "experts").mkdir(parents=True)
    (src / "experts" / "recall.safetensors").write_bytes(b"z")
    (src / "model.safetensors").write_bytes(b"w")
    (src / "dispatcher.json").write_text("{}")
    add_sidecars(src, ["experts/recall.safetensors", "dispatcher.json"])
    (tmp_path / "carried").mkdir()
    assert carry_sidecars(src, tmp_path / "carried") == ["experts/recall.safetensors", "dispatcher.json"]
    copied = copy_side_files(src, tmp_path / "copied")
    assert "experts/recall.safetensors" in copied and "model.safetensors" not in copied
    for d in ("carried", "copied"):
        assert (tmp_path / d / "experts" / "recall.safetensors").read_bytes() == b"z"


def test_self_consistency_votes_on_the_final_answer_and_bootstrap_brackets_the_mean():
    from agent_forge_core.experts.designs import answer_key, bootstrap, vote

    assert answer_key(" 3 + 4 = 7. Answer: 7\nQ:") == "7" and answer_key(" [CAT]") == "[cat]"
    assert vote([" 2 + 2 = 5. Answer: 5", " 2 + 2 = 4. Answer: 4", " 1 + 3 = 4. Answer: 4"]) == " 2 + 2 = 4. Answer: 4"
    b = bootstrap([1.0] * 30 + [0.0] * 70)
    assert b["mean"] == 0.3 and b["lo"] < 0.3 < b["hi"] and abs(b["median"] - 0.3) < 0.03 and b["hi"] - b["lo"] < 0.2


def test_the_search_selects_on_validation_only_and_scores_the_top_once_on_test():
    """A scorer whose test ranking is the reverse of its validation ranking: the chosen design must be the
    validation best, and test must be read only for the top designs, after selection."""
    from agent_forge_core.experts.designs import Design
    from agent_forge_core.experts.search import run_search, select

    calls = []

    def value(d: Design) -> float:
        return 0.1 * d.tools + 0.05 * (d.pattern == "self_consistency") + 0.02 * (d.dispatch == "linear") + \
            (0.01 * sum(d.mix) if d.mix else 0)

    def score(designs: list[Design], split: str) -> list[dict]:
        out = []
        for d in designs:
            calls.append(split)
            v = value(d) if split == "validation" else 1 - value(d)
            out.append({"median": v, "mean": v, "lo": v - 0.01, "hi": v + 0.01, "n": 16})
        return out

    out = run_search(score, ["linear", "prompt"], 3, False, designs=12, test_top=2, seed=0, batch=3)
    assert len(out["archive"]) == 12 and calls[:12] == ["validation"] * 12 and calls[12:] == ["test", "test"]
    best = max(out["archive"], key=lambda r: r["validation"]["median"])
    assert out["chosen"]["label"] == best["label"] and out["chosen"]["design"]["tools"]
    assert select(out["archive"])[0] is out["chosen"]
    assert sum("test" in r for r in out["archive"]) == 2
    labels = [r["label"] for r in out["archive"]]
    assert len(set(labels)) == len(labels)  # no design scored twice


def test_the_stage_searches_designs_and_the_runtime_loads_the_chosen_one(tiny_settings):
    from agent_forge_core.agent.runtime import Runtime

    s = tiny_settings(*EXPERTS, "experts.gates={}", "experts.search.enabled=true", "experts.search.designs=5",
                      "experts.search.examples=4", "experts.search.test_top=2")
    ctx = make_context(s)
    res = run_stage_on("experts", run_stage_on("import", [], ctx).outputs, ctx)
    folder = ctx.store.get(res.outputs[0])
    info = ctx.store.manifest(res.outputs[0]).info["search"]
    archive = json.loads((folder / "adas_archive.json").read_text())
    chosen = json.loads((folder / "agent_design.json").read_text())
    assert len(archive["archive"]) == 5 and chosen == archive["chosen"]["design"] and len(info["top"]) == 2
    assert (folder / "adas_search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_id = res.outputs[0]
    assert not ctx.store.exists(f"{run_id}-search")  # the internal checkpoint the jobs read is gone
    assert len(ctx.store.fs.glob(f"{ctx.store.root}/experts/{run_id}/designs/*/*.json")) == 5 + 2  # each stored once
    assert all(0 <= r["validation"]["lo"] <= r["validation"]["median"] <= r["validation"]["hi"] <= 1
               for r in archive["archive"])
    model, tok = load_model(str(folder))
    rt = Runtime.open(folder, model, tok, s.agent, session="t")
    assert rt.two_pass.mode == chosen["dispatch"]
    assert sorted(rt.tools) == sorted((["calc"] if chosen["tools"] else []) + (["search"] if chosen["retrieval"] else []))


def test_a_run_stopped_after_one_expert_trains_only_the_rest_on_resume(tiny_settings, monkeypatch):
    import agent_forge_core.experts.stage as stage

    s = tiny_settings(*EXPERTS, "experts.gates={}")
    ctx = make_context(s)
    base = run_stage_on("import", [], ctx)
    trained, real = [], stage.train_expert

    def stops_at_recall(model, tok, svf, domain, *a, **kw):
        if domain.name == "recall" and not trained.count("recall"):
            trained.append("recall")
            raise KeyboardInterrupt  # the run is killed while training the second expert
        trained.append(domain.name)
        return real(model, tok, svf, domain, *a, **kw)

    monkeypatch.setattr(stage, "train_expert", stops_at_recall)
    with pytest.raises(KeyboardInterrupt):
        run_stage_on("experts", base.outputs, ctx)
    first = list(trained)
    res = run_stage_on("experts", base.outputs, ctx)
    assert first == ["arithmetic", "recall"] and trained[2:] == ["recall", "instruction", "language"]
    folder = ctx.store.get(res.outputs[0])
    assert (folder / "experts" / "arithmetic.safetensors").is_file()
