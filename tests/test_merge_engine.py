"""The streaming merge engine: recipes, gradients/filters, slices, sharding, refusals, memory bound."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from agent_forge_core.errors import ConfigError, ModelLoadError
from agent_forge_core.merge import parse_recipe, run_merge
from agent_forge_core.merge.safetensors_io import LazyCheckpoint
from merge_models import variant, variants


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-models")
    return tiny_model_dir, variants(tiny_model_dir, root)


def sd(folder):
    ck = LazyCheckpoint(folder)
    return {n: ck.get(n) for n in ck.names()}


def test_recipe_round_trip():
    text = textwrap.dedent("""
        merge_method: ties
        base_model: base
        models:
          - model: a
            parameters: {weight: [0.2, 0.8], density: 0.5}
          - model: b
            parameters:
              weight: [{filter: self_attn, value: 0.3}, {value: 0.6}]
              density: 0.7
        parameters: {normalize: true, lambda: 1.1}
        dtype: float32
    """)
    r = parse_recipe(text)
    assert parse_recipe(r.to_yaml()) == r
    assert r.referenced_models() == ["base", "a", "b"]


def test_linear_merge_matches_torch_and_loads(models, tmp_path):
    from transformers import AutoModelForCausalLM

    base, (a, b, _) = models
    r = parse_recipe({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 1}},
                                                          {"model": str(b), "parameters": {"weight": 3}}]})
    stats = run_merge(r, tmp_path / "out")
    got, sa, sb = sd(tmp_path / "out"), sd(a), sd(b)
    for k in sa:
        assert torch.allclose(got[k], (sa[k] + 3 * sb[k]) / 4, atol=1e-6)
    assert stats.tensors == len(sa) and stats.bytes_written > 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight.data, got["model.layers.1.mlp.up_proj.weight"])
    assert (tmp_path / "out" / "tokenizer.json").read_text() == (a / "tokenizer.json").read_text()
    assert parse_recipe((tmp_path / "out" / "merge_recipe.yaml").read_text()) == r


def test_layer_gradient_and_filters(models, tmp_path):
    base, (a, b, _) = models
    # two layers: t=0 for layer 0 (and embeddings/norm), t=1 for layer 1
    r = parse_recipe({"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": [1.0, 0.0]}},
        {"model": str(b), "parameters": {"weight": [{"filter": "self_attn", "value": 5.0}, {"value": [0.0, 1.0]}]}},
    ]})
    run_merge(r, tmp_path / "out")
    got, sa, sb = sd(tmp_path / "out"), sd(a), sd(b)
    assert torch.allclose(got["model.layers.0.mlp.up_proj.weight"], sa["model.layers.0.mlp.up_proj.weight"])
    assert torch.allclose(got["model.layers.1.mlp.up_proj.weight"], sb["model.layers.1.mlp.up_proj.weight"])
    assert torch.allclose(got["model.embed_tokens.weight"], sa["model.embed_tokens.weight"])
    q0 = got["model.layers.0.self_attn.q_proj.weight"]  # weights 1 (a) and 5 (b)
    assert torch.allclose(q0, (sa["model.layers.0.self_attn.q_proj.weight"] + 5 * sb["model.layers.0.self_attn.q_proj.weight"]) / 6, atol=1e-6)


def test_passthrough_slices_stack_layers(models, tmp_path):
    from transformers import AutoModelForCausalLM

    base, (a, b, _) = models
    r = parse_recipe({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(a), "layer_range": [0, 1]}]},
        {"sources": [{"model": str(b), "layer_range": [0, 2]}]},
    ]})
    run_merge(r, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    got, sa, sb = sd(tmp_path / "out"), sd(a), sd(b)
    assert torch.equal(got["model.layers.0.mlp.down_proj.weight"], sa["model.layers.0.mlp.down_proj.weight"])
    assert torch.equal(got["model.layers.2.mlp.down_proj.weight"], sb["model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(got["model.embed_tokens.weight"], sa["model.embed_tokens.weight"])
    assert torch.equal(got["model.norm.weight"], sb["model.norm.weight"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert len(model.model.layers) == 3


def test_sharded_output_equals_single_file(models, tmp_path):
    from transformers import AutoModelForCausalLM

    base, (a, b, c) = models
    r = parse_recipe({"merge_method": "ties", "base_model": str(base), "models": [
        {"model": str(m), "parameters": {"weight": 1, "density": 0.5}} for m in (a, b, c)]})
    run_merge(r, tmp_path / "one")
    run_merge(r, tmp_path / "many", max_shard_bytes=100_000)
    assert len(list((tmp_path / "many").glob("model-*.safetensors"))) > 1
    one, many = sd(tmp_path / "one"), sd(tmp_path / "many")
    assert one.keys() == many.keys() and all(torch.equal(one[k], many[k]) for k in one)
    AutoModelForCausalLM.from_pretrained(tmp_path / "many")


def test_dare_recipe_is_reproducible(models, tmp_path):
    base, (a, b, _) = models
    def recipe(seed):
        return parse_recipe({"merge_method": "dare_ties", "base_model": str(base), "parameters": {"seed": seed},
                             "models": [{"model": str(m), "parameters": {"weight": 1, "density": 0.3}} for m in (a, b)]})
    run_merge(recipe(1), tmp_path / "x")
    run_merge(recipe(1), tmp_path / "y")
    run_merge(recipe(2), tmp_path / "z")
    x, y, z = sd(tmp_path / "x"), sd(tmp_path / "y"), sd(tmp_path / "z")
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(x[k], y[k]) and not torch.equal(x[k], z[k])


def test_refuses_mismatched_shapes_naming_the_tensor(models, tmp_path):
    base, (a, _, _) = models

    def shrink(sd):
        sd["model.layers.1.mlp.up_proj.weight"] = sd["model.layers.1.mlp.up_proj.weight"][:-1]
        return sd

    bad = variant(base, tmp_path / "bad", 5, edit=shrink)
    r = parse_recipe({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 1}},
                                                          {"model": str(bad), "parameters": {"weight": 1}}]})
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*shape"):
        run_merge(r, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_other_architecture_and_tokenizer(models, tmp_path):
    base, (a, _, _) = models
    other = variant(base, tmp_path / "wide", 6)
    cfg = json.loads((other / "config.json").read_text())
    cfg["hidden_size"] = 128
    (other / "config.json").write_text(json.dumps(cfg))
    r = parse_recipe({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 1}},
                                                          {"model": str(other), "parameters": {"weight": 1}}]})
    with pytest.raises(ModelLoadError, match="hidden_size"):
        run_merge(r, tmp_path / "out")
    tok = variant(base, tmp_path / "tok", 7)
    data = json.loads((tok / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    k = next(iter(vocab))
    vocab[k + "zz"] = vocab.pop(k)
    (tok / "tokenizer.json").write_text(json.dumps(data))
    r = parse_recipe({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 1}},
                                                          {"model": str(tok), "parameters": {"weight": 1}}]})
    with pytest.raises(ModelLoadError, match="tokenizers differ"):
        run_merge(r, tmp_path / "out")


def test_recipe_errors_are_clear(models, tmp_path):
    base, (a, b, _) = models
    two = [{"model": str(a), "parameters": {"weight": 1}}, {"model": str(b), "parameters": {"weight": 1}}]
    with pytest.raises(ConfigError, match="needs base_model"):
        run_merge(parse_recipe({"merge_method": "ties", "models": two}), tmp_path / "o")
    with pytest.raises(ConfigError, match="no parameter 'densty'"):
        run_merge(parse_recipe({"merge_method": "ties", "base_model": str(base), "models": two,
                                "parameters": {"densty": 0.5}}), tmp_path / "o")
    with pytest.raises(ConfigError, match="needs parameter 'weight'"):
        run_merge(parse_recipe({"merge_method": "linear", "models": [{"model": str(a)}, {"model": str(b)}]}), tmp_path / "o")
    with pytest.raises(ConfigError, match="at most 1"):
        run_merge(parse_recipe({"merge_method": "slerp", "base_model": str(base), "models": two,
                                "parameters": {"t": 0.5}}), tmp_path / "o")
    with pytest.raises(ConfigError, match="exactly one of"):
        parse_recipe({"merge_method": "linear"})


def test_existing_output_is_never_overwritten(models, tmp_path):
    base, (a, b, _) = models
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = parse_recipe({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 1}}]})
    with pytest.raises(FileExistsError, match="not empty"):
        run_merge(r, out)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(FileExistsError, match="is a file"):
        run_merge(r, out / "keep.txt")
    assert (out / "keep.txt").read_text() == "precious"


def test_finiteness_check_is_exact_when_a_finite_sum_overflows():
    from agent_forge_core.merge.engine import is_finite

    big = torch.full((4,), 3e38)  # finite entries whose float32 sum is inf
    assert is_finite(big)
    assert not is_finite(torch.tensor([1.0, float("nan")])) and not is_finite(torch.tensor([float("-inf"), 1.0]))
    assert is_finite(torch.zeros(0)) and is_finite(torch.arange(3))


def test_non_finite_merge_fails_and_leaves_nothing(models, tmp_path):
    base, (a, b, _) = models
    r = parse_recipe({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 1}},
                                                          {"model": str(b), "parameters": {"weight": -1}}]})
    with pytest.raises(FloatingPointError, match="non-finite"):
        run_merge(r, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


MEMORY_SCRIPT = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
root = Path(sys.argv[1])
n_tensors, rows = 24, 1024  # 24 tensors of 1024x1024 float32 = 4 MiB each, 96 MiB per model
for m in range(3):
    g = torch.Generator().manual_seed(m)
    d = root / f"m{m}"; d.mkdir()
    for i in range(0, n_tensors, 12):  # two 48 MiB shards, each larger than the read window
        part = {f"model.layers.{j}.mlp.up_proj.weight": torch.randn(rows, 1024, generator=g) for j in range(i, i + 12)}
        save_file(part, str(d / f"part{i}.safetensors")); del part
    import json
    wm = {f"model.layers.{j}.mlp.up_proj.weight": f"part{j - j % 12}.safetensors" for j in range(n_tensors)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": n_tensors}))
from agent_forge_core.merge import parse_recipe, run_merge
def status_kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
# the peak (VmHWM) from here on: getrusage's ru_maxrss would start at the parent's RSS at fork time
Path("/proc/self/clear_refs").write_text("5")
before = status_kb("VmHWM")
r = parse_recipe({"merge_method": "ties", "base_model": str(root / "m0"), "models": [
    {"model": str(root / f"m{m}"), "parameters": {"weight": 1, "density": 0.5}} for m in (1, 2)]})
stats = run_merge(r, root / "out", window_bytes=8 << 20)
after = status_kb("VmHWM")
print((after - before) * 1024, stats.bytes_read, stats.bytes_written)
"""


def test_streaming_peak_memory_is_a_few_tensors(tmp_path):
    # glibc keeps freed heap chunks of a few MiB for reuse, which would count as "peak RSS" without
    # being held by the merge; serve big allocations by mmap so the peak is what the merge holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         check=True, env=env)
    growth, read, written = map(int, out.stdout.split())
    tensor = 1024 * 1024 * 4
    assert read == 3 * 24 * tensor and written >= 24 * tensor
    # the stated bound: one step's inputs, 2 deltas, masks and temporaries (~13 tensors) plus, per input,
    # the read window (8 MiB) and one tensor of mapped pages: 92 MiB, where the three models are 288 MiB
    bound = 14 * tensor + 3 * (2 * tensor + tensor)
    assert growth < bound, f"peak RSS grew by {growth / 2**20:.0f} MiB while merging 3 x 96 MiB"


def test_cli_merge_with_folders_and_checkpoint_keys(models, tmp_path, capsys):
    from agent_forge_core.store import CheckpointStore, Manifest
    from flows.cli import main

    base, (a, b, _) = models
    store = CheckpointStore(str(tmp_path / "store"))
    store.put("cognate-b-123", b, Manifest(key="", stage="cognate", parents=[], config_hash="x", code_version="y"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                      f"  - model: {a}\n    parameters: {{weight: 0.5}}\n"
                      f"  - model: cognate-b-123\n    parameters: {{weight: 0.5}}\n")
    rc = main(["merge", str(recipe), str(tmp_path / "out"), "--set", f"store.url={tmp_path}/store"])
    assert rc == 0 and "merged" in capsys.readouterr().out
    got, s0, sa, sb = sd(tmp_path / "out"), sd(base), sd(a), sd(b)
    k = "model.layers.0.self_attn.o_proj.weight"
    assert torch.allclose(got[k], s0[k] + 0.5 * (sa[k] - s0[k]) + 0.5 * (sb[k] - s0[k]), atol=1e-6)
    recipe.write_text(recipe.read_text().replace("cognate-b-123", "cognate-nope"))
    assert main(["merge", str(recipe), str(tmp_path / "out2"), "--set", f"store.url={tmp_path}/store"]) == 2
    assert "neither a folder nor a checkpoint" in capsys.readouterr().err
