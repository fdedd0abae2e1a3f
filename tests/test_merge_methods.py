"""Every merge method against hand-computed results on small tensors."""
import math

import pytest
import torch

from agent_forge_core.merge.methods import TensorInputs, get_method
from agent_forge_core.merge.sparsify import breadcrumbs_mask, magnitude_mask, rank_window_mask


def run(method, tensors, model_params, base_index=None, seed=0, **params):
    m = get_method(method)
    defaults = {k: v for k, v in m.global_params.items()}
    defaults.update(params)
    tensors = [torch.tensor(t, dtype=torch.float32) for t in tensors]
    return m.merge(TensorInputs("model.layers.0.mlp.up_proj.weight", tensors, model_params, base_index, defaults, seed,
                                [f"m{i}" for i in range(len(tensors))]))


def test_linear_weighted_average():
    out = run("linear", [[1, 2], [3, 6]], [{"weight": 1}, {"weight": 3}])
    assert out.tolist() == [2.5, 5.0]
    out = run("linear", [[1, 2], [3, 6]], [{"weight": 1}, {"weight": 3}], normalize=False)
    assert out.tolist() == [10.0, 20.0]


def test_linear_ignores_unlisted_base():
    out = run("linear", [[1, 2], [100, 100]], [{"weight": 1}, None], base_index=1)
    assert out.tolist() == [1.0, 2.0]


def test_task_arithmetic():
    # base + λ Σ w_i (θ_i − base) = 2 * (0.5*[1,-2] + 0.5*[3,1]) = [4, -1]
    out = run("task_arithmetic", [[0, 0], [1, -2], [3, 1]], [None, {"weight": .5}, {"weight": .5}], base_index=0, **{"lambda": 2.0})
    assert torch.allclose(out, torch.tensor([4.0, -1.0]))


def test_ties_trim_elect_disjoint_mean():
    # δ1 = [1,-2,.1,3] -> top-2 -> [0,-2,0,3];  δ2 = [-3,-1,.2,1.5] -> [-3,0,0,1.5]
    # Σ = [-3,-2,0,4.5] -> elected signs [-,-,+,+]; agreeing entries averaged
    out = run("ties", [[0, 0, 0, 0], [1, -2, .1, 3], [-3, -1, .2, 1.5]],
              [None, {"weight": 1, "density": .5}, {"weight": 1, "density": .5}], base_index=0)
    assert torch.allclose(out, torch.tensor([-3.0, -2.0, 0.0, 2.25]))


def test_ties_weights_enter_the_sign_election():
    # δ1 = [1], δ2 = [-2]; unweighted the sum is -1 (δ2 wins); with w1 = 3 it is +1 (δ1 wins)
    args = ([[0.0], [1.0], [-2.0]],)
    assert run("ties", *args, [None, {"weight": 1, "density": 1}, {"weight": 1, "density": 1}], base_index=0).item() == -2.0
    assert run("ties", *args, [None, {"weight": 3, "density": 1}, {"weight": 1, "density": 1}], base_index=0).item() == 1.0


def test_dare_inverse_p_rescale_is_unbiased_and_exact():
    delta = torch.linspace(-1, 1, 4000)
    base = torch.zeros_like(delta)
    outs = []
    for seed in range(40):
        out = run("dare_linear", [base.tolist(), delta.tolist()], [None, {"weight": 1, "density": 0.25}], base_index=0,
                  seed=seed, rescale_mode="inverse_p")
        kept = out != 0
        assert torch.allclose(out[kept], delta[kept] / 0.25)  # kept entries are δ/(1-p), the rest 0
        assert 0.2 < kept.float().mean() < 0.3
        outs.append(out)
    mean = torch.stack(outs).mean(0)  # E[δ̂] = δ: averaged over seeds and entries, the mass is kept
    assert abs((mean * delta.sign()).sum() / delta.abs().sum() - 1) < 0.03


def test_dare_l1_rescale_restores_l1_norm():
    delta = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    out = run("dare_linear", [[0.0] * 1000, delta.tolist()], [None, {"weight": 1, "density": 0.3}], base_index=0, seed=1)
    assert math.isclose(out.abs().sum().item(), delta.abs().sum().item(), rel_tol=1e-5)
    assert (out == 0).float().mean() > 0.6


def test_dare_is_deterministic_in_its_seed():
    args = ([[0.0] * 64, list(range(64))], [None, {"weight": 1, "density": 0.5}])
    a = run("dare_ties", *args, base_index=0, seed=7)
    b = run("dare_ties", *args, base_index=0, seed=7)
    c = run("dare_ties", *args, base_index=0, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_breadcrumbs_drops_both_tails():
    delta = torch.arange(1.0, 11.0)  # n=10, keep 5, drop top 2 (gamma .2), so ranks 3..7 -> values 4..8
    mask = breadcrumbs_mask(delta, density=0.5, gamma=0.2)
    assert delta[mask].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]


def test_breadcrumbs_gamma_zero_is_magnitude_pruning_not_empty():
    delta = torch.arange(1.0, 11.0)
    assert delta[breadcrumbs_mask(delta, 0.5, 0.0)].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0]
    out = run("breadcrumbs", [[0.0] * 10, delta.tolist()], [None, {"weight": 1, "density": .5, "gamma": 0.0}], base_index=0)
    assert out.tolist() == [0.0] * 5 + [6.0, 7.0, 8.0, 9.0, 10.0]


def test_magnitude_mask_keeps_exactly_k_with_ties():
    x = torch.tensor([1.0, -1.0, 1.0, 1.0, 0.5, 2.0])
    m = magnitude_mask(x, 0.5)  # k = 3: the 2.0 and two of the four tied 1.0s
    assert int(m.sum()) == 3 and bool(m[5])
    assert int(rank_window_mask(torch.ones(7), 2, 5).sum()) == 3


def test_magnitude_mask_matches_a_full_sort():
    x = torch.randn(257, 31, generator=torch.Generator().manual_seed(3))
    for density in (0.01, 0.1, 0.5, 0.9):
        k = max(1, int(density * x.numel()))
        ref = torch.zeros(x.numel(), dtype=torch.bool)
        ref[torch.argsort(x.abs().reshape(-1), descending=True)[:k]] = True
        assert torch.equal(magnitude_mask(x, density).reshape(-1), ref)


def test_model_stock_interpolation_ratio():
    base = [0.0, 0.0]
    # orthogonal offsets: cos = 0 -> t = 0 -> base
    assert run("model_stock", [base, [1, 0], [0, 1]], [None, {}, {}], base_index=0).tolist() == [0.0, 0.0]
    # identical offsets: cos = 1 -> t = 2/(1+1) = 1 -> their average
    assert run("model_stock", [base, [1, 1], [1, 1]], [None, {}, {}], base_index=0).tolist() == [1.0, 1.0]
    # cos 60°: t = 2*.5/(1+.5) = 2/3 of the average [.75, .433]
    a, b = [1.0, 0.0], [0.5, math.sqrt(3) / 2]
    out = run("model_stock", [base, a, b], [None, {}, {}], base_index=0)
    assert torch.allclose(out, torch.tensor([0.75, math.sqrt(3) / 4]) * 2 / 3, atol=1e-6)


def test_slerp_on_the_circle_and_parallel_fallback():
    out = run("slerp", [[1, 0], [0, 1]], [None, {}], base_index=0, t=0.5)
    assert torch.allclose(out, torch.tensor([math.sqrt(.5), math.sqrt(.5)]), atol=1e-6)
    out = run("slerp", [[1, 0], [0, 1]], [None, {}], base_index=0, t=0.0)
    assert torch.allclose(out, torch.tensor([1.0, 0.0]), atol=1e-6)
    out = run("slerp", [[1, 1], [2, 2]], [None, {}], base_index=0, t=0.25)  # parallel -> linear
    assert torch.allclose(out, torch.tensor([1.25, 1.25]))


def test_passthrough_scale():
    assert run("passthrough", [[1, -2]], [{"scale": 2.0}]).tolist() == [2.0, -4.0]
    assert run("passthrough", [[1, -2]], [{"scale": None}]).tolist() == [1.0, -2.0]


def test_unknown_method_names_the_choices():
    from agent_forge_core.errors import ConfigError

    with pytest.raises(ConfigError, match="available: .*ties"):
        get_method("tiez")


def test_rank_window_matches_a_stable_sort_with_ties():
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 6, (400,), generator=g).float()  # many ties
    order = torch.argsort(x, stable=True)
    for lo, hi in [(0, 37), (100, 250), (390, 400), (0, 400), (7, 8), (150, 150)]:
        ref = torch.zeros(400, dtype=torch.bool)
        ref[order[lo:hi]] = True
        assert torch.equal(rank_window_mask(x, lo, hi), ref), (lo, hi)
    for density in (0.1, 0.33, 0.5, 0.99):
        k = max(1, int(density * 400))
        ref = torch.zeros(400, dtype=torch.bool)
        ref[torch.argsort(x, descending=True, stable=True)[:k]] = True
        assert torch.equal(magnitude_mask(x, density), ref)



def _ties_reference(base, deltas, weights, normalize):
    """The TIES election as per-model sign and agreement tensors (the formula in task_vectors.py)."""
    d = torch.stack([w * x for w, x in zip(weights, deltas)]).double()
    elected = torch.where(d.sum(0) >= 0, 1.0, -1.0)
    agree = d.sign() == elected
    mixed = (d * agree).sum(0)
    if normalize:
        div = (torch.tensor(weights, dtype=torch.float64).reshape(-1, 1) * agree).sum(0)
        mixed = mixed / torch.where(div == 0, 1.0, div.double())
    return base.double() + mixed


@pytest.mark.parametrize("normalize", [True, False])
def test_chunked_sign_election_matches_the_per_model_formula(normalize):
    # 2.5 chunks of entries on a grid of 1/4 with weights of 1/4s: every sum is exact in float32, so exact
    # zeros and sums of exactly 0 (elected +) occur, and both sides must agree on them
    g = torch.Generator().manual_seed(0)
    n = int(2.5 * (1 << 18))
    base = (torch.randn(n, generator=g) * 4).round() / 4
    deltas = [(torch.randn(n, generator=g) * 4).round() / 4 for _ in range(3)]
    weights = [1.0, 0.5, -0.75]
    out = run("ties", [base.tolist(), *[(base + x).tolist() for x in deltas]],
              [None, *[{"weight": w, "density": 1} for w in weights]], base_index=0, normalize=normalize)
    ref = _ties_reference(base, deltas, weights, normalize)
    assert (ref - base.double()).eq(0).any()  # the case of no agreeing model is exercised
    assert torch.allclose(out.double(), ref, atol=1e-6)


def test_slerp_chunked_dots_match_float64():
    from agent_forge_core.merge.methods.slerp import CHUNK, _dots

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5 * CHUNK + 7, generator=g), torch.randn(5 * CHUNK + 7, generator=g)
    aa, bb, ab = _dots(a, b)
    ref = (a.double() @ a.double(), b.double() @ b.double(), a.double() @ b.double())
    for got, want in zip((aa, bb, ab), ref):
        assert abs(got - want.item()) <= 1e-6 * (ref[0] * ref[1]).sqrt().item()


def test_dare_keeps_density_of_entries_independently_per_seed():
    from agent_forge_core.merge.sparsify import random_drop_, tensor_generator

    n = 1 << 20
    kept = [random_drop_(torch.ones(n), 0.3, tensor_generator(s, "t", "m")) for s in (0, 1)]
    for k in kept:  # binomial sd of the kept fraction: sqrt(.3 * .7 / n) = 4.5e-4
        assert abs(k.mean().item() - 0.3) < 5 * 4.5e-4 and set(k.unique().tolist()) == {0.0, 1.0}
    both = (kept[0] * kept[1]).mean().item()  # independent draws overlap on .09 of the entries
    assert abs(both - 0.09) < 0.003
    again = random_drop_(torch.ones(n), 0.3, tensor_generator(0, "t", "m"))
    assert torch.equal(again, kept[0])
