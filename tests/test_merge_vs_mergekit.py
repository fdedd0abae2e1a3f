"""Our merges equal mergekit 0.1.5's on the same YAML (float32, relative error <= 1e-5 per tensor).

DARE is left out: mergekit draws its drops from torch's global RNG, ours from the recipe's seed, so only
the deterministic methods can be compared tensor for tensor."""
import pytest
import yaml

from agent_forge_core.merge import parse_recipe, run_merge
from agent_forge_core.merge.safetensors_io import LazyCheckpoint
from merge_models import variants

mergekit = pytest.importorskip("mergekit", reason="mergekit not installed (pip install -e '.[compare]')")


def recipes(base, a, b, c):
    three = lambda **p: [{"model": str(m), "parameters": dict(p)} for m in (a, b, c)]  # noqa: E731
    return {
        "linear": {"merge_method": "linear", "models": [
            {"model": str(a), "parameters": {"weight": [0.2, 0.9]}},
            {"model": str(b), "parameters": {"weight": [{"filter": "mlp", "value": 0.7}, {"value": 0.3}]}},
            {"model": str(c), "parameters": {"weight": 0.5}}]},
        "slerp": {"merge_method": "slerp", "base_model": str(base), "models": [{"model": str(base)}, {"model": str(a)}],
                  "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.8]}, {"value": 0.4}]}},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": str(base),
                            "models": three(weight=0.6), "parameters": {"lambda": 0.9}},
        "ties": {"merge_method": "ties", "base_model": str(base), "models": [
            {"model": str(a), "parameters": {"weight": 1.0, "density": [0.3, 0.7]}},
            {"model": str(b), "parameters": {"weight": 0.5, "density": 0.5}},
            {"model": str(c), "parameters": {"weight": 0.8, "density": 0.9}}], "parameters": {"normalize": True}},
        "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": str(base),
                        "models": three(weight=0.5, density=0.8, gamma=0.05)},
        "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "base_model": str(base),
                             "models": three(weight=0.7, density=0.6, gamma=0.1)},
        "model_stock": {"merge_method": "model_stock", "base_model": str(base),
                        "models": [{"model": str(m)} for m in (a, b, c)]},
        "passthrough": {"merge_method": "passthrough", "slices": [
            {"sources": [{"model": str(a), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(b), "layer_range": [1, 2]}]}]},
    }


def run_mergekit(recipe: dict, out) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge as mk_run

    cfg = MergeConfiguration.model_validate(yaml.safe_load(yaml.safe_dump({**recipe, "dtype": "float32"})))
    mk_run(cfg, str(out), options=MergeOptions(copy_tokenizer=True, lazy_unpickle=False, device="cpu", quiet=True))


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    return (tiny_model_dir, *variants(tiny_model_dir, tmp_path_factory.mktemp("mk-models")))


@pytest.mark.parametrize("method", ["linear", "slerp", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties",
                                    "model_stock", "passthrough"])
def test_same_tensors_as_mergekit(method, models, tmp_path):
    recipe = recipes(*models)[method]
    run_mergekit(recipe, tmp_path / "mk")
    run_merge(parse_recipe({**recipe, "dtype": "float32"}), tmp_path / "ours")
    mk, ours = LazyCheckpoint(tmp_path / "mk"), LazyCheckpoint(tmp_path / "ours")
    names = [n for n in mk.names() if n != "lm_head.weight"]  # tied to the embeddings
    assert set(names) == set(ours.names())
    for n in names:
        a, b = ours.get(n).double(), mk.get(n).double()
        rel = ((a - b).norm() / b.norm().clamp(min=1e-12)).item()
        assert rel <= 1e-5, f"{method}: {n} differs from mergekit by {rel:.2e}"
