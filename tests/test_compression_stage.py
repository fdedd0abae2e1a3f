"""The compression stage on tiny models: the artifact rebuilds the model exactly as its payload says, its
size on disk is the accounted bits, `auto` meets its target, BitNet layers pass through untouched."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from agent_forge_core.formats.compressed import MANIFEST, PAYLOAD, check_size, decode_state
from agent_forge_core.compression.plan import Option, select_auto
from agent_forge_core.context import make_context
from agent_forge_core.errors import ConfigError
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.plan import plan
from agent_forge_core.stages.runner import run_stage_on


def rules(*items) -> str:
    return "compression.rules=" + yaml.safe_dump(list(items), default_flow_style=True).strip()


PROJ_VPTQ = {"pattern": "*_proj.weight", "codec": "vptq", "params": {"v": 4, "k": 16}}
EMBED_RTN = {"pattern": "*embed_tokens.weight", "codec": "rtn", "params": {"bits": 8, "group": 64}}
KEEP = {"pattern": "*", "codec": "keep"}


def compress(tiny_settings, *extra):
    s = tiny_settings("cognate.enabled=false", "compression.enabled=true", "compression.calibration_tokens=512",
                      "compression.gates={}", "compression.target_bpw=null", "compression.finetune.enabled=false", *extra)
    assert plan(s) == ["import", "compression"]
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    r = run_stage_on("compression", [base], ctx)
    (key,) = r.outputs
    return ctx, base, key, r.info[key]


def test_artifact_rebuilds_the_model_its_payload_describes(tiny_settings):
    ctx, base, key, info = compress(tiny_settings, rules(PROJ_VPTQ, EMBED_RTN, KEEP), "compression.keep_dtype=float32")
    folder = ctx.store.get(key)
    assert not (folder / "model.safetensors").exists()  # no float copy of the model
    assert {p.name for p in folder.glob("*.safetensors")} == {PAYLOAD}
    manifest = json.loads((folder / MANIFEST).read_text())
    entries = manifest["tensors"]
    codecs = {n: e["codec"] for n, e in entries.items()}
    assert codecs["model.layers.0.self_attn.q_proj.weight"] == "vptq" and codecs["model.embed_tokens.weight"] == "rtn"
    assert codecs["model.norm.weight"] == "keep"
    total = manifest["totals"]
    assert total["bits"] == sum(e["bits"] for e in entries.values())
    assert total["bits_per_weight"] == pytest.approx(total["bits"] / total["weights"])
    size = check_size(folder)  # bytes on disk == accounted bits (+ a byte of padding per packed field)
    assert size["data_bytes"] * 8 >= size["accounted_bits"] == info["accounted_bits"]

    # the rebuilt model is the original architecture holding exactly the decoded tensors
    original, tok = load_model(str(ctx.store.get(base)))
    rebuilt, _ = load_model(str(folder))
    state, _ = decode_state(folder)
    reference = type(original)(original.config)
    reference.load_state_dict(state, strict=False)
    reference.tie_weights()
    ids = tok("Q: What is 12 + 30?\nA:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, reference.eval()(ids).logits)
        drift = (rebuilt(ids).logits - original(ids).logits).abs().max().item()
    assert 0 < drift  # it is compressed, not the original
    w = original.state_dict()["model.layers.0.mlp.up_proj.weight"]
    w_hat = rebuilt.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(rebuilt.state_dict()["model.norm.weight"], original.state_dict()["model.norm.weight"])
    assert 0 < ((w_hat - w).norm() / w.norm()).item() < 1.0  # 1 bit/weight (k=16, v=4): coarse, Hessian-weighted
    # metrics are the rebuilt model's; the gate compared them with the input
    m = ctx.store.manifest(key)
    assert m.parents == [base] and m.info["compared_to"] == base and "perplexity" in m.metrics
    assert m.info["hessians"] == 14  # 7 projections x 2 layers: VPTQ used calibration statistics


def test_hessians_count_every_token_of_the_text_and_the_traffic_once(tiny_model_dir):
    from agent_forge_core.compression.calibration import linear_hessians
    from agent_forge_core.training.sft_data import text_sequences

    model, tok = load_model(str(tiny_model_dir))
    name = "model.layers.0.self_attn.q_proj"
    traffic = [[5, 9, 2, 7], list(range(3, 20))]
    got = linear_hessians(model, tok, [name], 96, 32, seed=1, traffic=traffic)[name]
    # reference: q_proj's input is the first layer's input norm of the embeddings
    layer = model.model.layers[0]
    with torch.no_grad():
        xs = [layer.input_layernorm(model.model.embed_tokens(torch.tensor(ids))).double()
              for ids in [*(ids for ids, _ in text_sequences(tok, 32, 3, 1)), *traffic]]
    x = torch.cat(xs)
    assert x.shape[0] == 3 * 32 + 4 + 17
    torch.testing.assert_close(got, (x.T @ x / x.shape[0]).float(), rtol=1e-5, atol=1e-6)
    text_only = linear_hessians(model, tok, [name], 96, 32, seed=1)[name]
    assert not torch.allclose(text_only, got, rtol=1e-3)


def test_auto_meets_the_target_bits_within_the_error_budget(tiny_settings):
    cands = "compression.auto_candidates=" + yaml.safe_dump(
        [{"codec": "rtn", "params": {"bits": b, "group": 64}} for b in (2, 4, 8)], default_flow_style=True).strip()
    auto = {"pattern": "*_proj.weight", "codec": "auto"}
    ctx, _, key, info = compress(tiny_settings, rules(auto, EMBED_RTN, KEEP), cands, "compression.target_bpw=6.0",
                                 "compression.error_budget=0.5")
    assert info["bits_per_weight"] <= 6.0
    assert len(info["auto_choices"]) >= 2  # a real trade-off: not one codec everywhere
    entries = json.loads((ctx.store.get(key) / MANIFEST).read_text())["tensors"]
    assert all(e["error"] <= 0.5 for n, e in entries.items() if n.endswith("_proj.weight"))
    # an unreachable target is refused with the achievable minimum and the fix
    with pytest.raises(ConfigError, match="raise target_bpw or error_budget"):
        compress(tiny_settings, rules(auto, EMBED_RTN, KEEP), cands, "compression.target_bpw=2.0",
                 "compression.error_budget=0.001")


def test_select_auto_spends_bits_where_they_buy_accuracy():
    # tensor a: 4 bits cut its error a lot; tensor b: barely. With room for one upgrade, a gets it.
    opts = {"a": [Option(0, 200, 0.30, 100), Option(1, 400, 0.05, 100)],
            "b": [Option(0, 200, 0.10, 100), Option(1, 400, 0.09, 100)]}
    sel = select_auto(opts, fixed_bits=0, total_weights=200, target_bpw=3.0, error_budget=1.0)
    assert (sel["a"].index, sel["b"].index) == (1, 0)
    assert select_auto(opts, 0, 200, None, 1.0)["b"].index == 1  # no target: most accurate
    assert select_auto(opts, 0, 200, 3.0, 0.2)["a"].index == 1  # over budget: 0.30 is not allowed


def test_bitnet_layers_pass_through_with_their_packed_codes(tiny_settings):
    # the default's layout: a float decoder layer (the tiny model's last) beside the ternary ones
    s = tiny_settings("cognate.enabled=false", "bitnet.enabled=true", "bitnet.steps=2", "bitnet.warmup=1",
                      "bitnet.float_layers=[-1]",
                      "bitnet.measure_ptq=false", "bitnet.gates={}", "compression.enabled=true", "compression.gates={}",
                      "compression.target_bpw=null", "compression.keep_dtype=float32", rules(KEEP))
    assert plan(s) == ["import", "bitnet", "compression"]
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    (bit_key,) = run_stage_on("bitnet", [base], ctx).outputs
    (key,) = run_stage_on("compression", [bit_key], ctx).outputs
    folder, bit_folder = ctx.store.get(key), ctx.store.get(bit_key)
    entries = json.loads((folder / MANIFEST).read_text())["tensors"]
    ternary = [n for n, e in entries.items() if e["codec"] == "ternary"]
    assert len(ternary) == 7 and all(".layers.0." in n for n in ternary)
    float_proj = [n for n in entries if ".layers.1." in n and n.endswith("_proj.weight")]
    assert len(float_proj) == 7 and all(entries[n]["codec"] != "ternary" for n in float_proj)
    packed, src = load_file(str(folder / PAYLOAD)), load_file(str(bit_folder / "model.safetensors"))
    name = ternary[0].removesuffix(".weight")
    assert torch.equal(packed[f"{name}.weight::packed"], src[f"{name}.packed"])
    assert torch.equal(packed[f"{name}.weight::gamma"], src[f"{name}.gamma"])  # one scale per output row
    rows, cols = entries[ternary[0]]["shape"]
    assert src[f"{name}.gamma"].shape == (rows,)
    code_bits = -(-rows * cols // 5) * 8  # base3: whole bytes of 5 codes
    assert entries[ternary[0]]["bits_per_weight"] == pytest.approx((code_bits + 32 * rows) / (rows * cols))
    a, tok = load_model(str(folder))
    b, _ = load_model(str(bit_folder))
    ids = tok("Q: Records: cat=41; sun=7. What is the value of sun?\nA:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    check_size(folder)

    # each folder is owned by its format; both export to the same plain transformers model (the ternary
    # values as float weights), which loads with no project code
    from transformers import AutoModelForCausalLM

    from agent_forge_core import formats
    from agent_forge_core.model_io import export_hf

    assert formats.detect(folder).NAME == "compressed" and formats.detect(bit_folder).NAME == "bitnet"
    export_hf(folder, ctx.work_dir / "from-artifact")
    export_hf(bit_folder, ctx.work_dir / "from-bitnet")
    plain = [AutoModelForCausalLM.from_pretrained(ctx.work_dir / d) for d in ("from-artifact", "from-bitnet")]
    assert not (ctx.work_dir / "from-artifact" / "bitnet.json").exists()
    with torch.no_grad():
        assert torch.equal(plain[0](ids).logits, plain[1](ids).logits)


def test_a_payload_holding_more_than_accounted_is_refused(tiny_settings, tmp_path):
    ctx, _, key, _ = compress(tiny_settings, rules(PROJ_VPTQ, EMBED_RTN, KEEP))
    import shutil

    folder = tmp_path / "tampered"
    shutil.copytree(ctx.store.get(key), folder)
    payload = load_file(str(folder / PAYLOAD))
    payload["smuggled"] = torch.zeros(1000)  # float weights nobody accounted for
    save_file(payload, str(folder / PAYLOAD))
    with pytest.raises(AssertionError, match="not what its manifest says"):
        check_size(folder)


def test_bad_plans_are_refused_before_any_work(tiny_settings):
    with pytest.raises(ConfigError, match="vptq"):
        tiny_settings(rules({"pattern": "*", "codec": "vptq", "params": {"k": 1}}))
    with pytest.raises(ConfigError, match="codec hyper"):
        tiny_settings(rules({"pattern": "*", "codec": "hyper", "params": {"bogus": 3}}))
    with pytest.raises(ConfigError, match="compression.rules"):
        tiny_settings(rules({"pattern": "*", "codec": "zip"}))


def test_a_failed_gate_fails_the_stage_and_publishes_nothing(tiny_settings):
    from agent_forge_core.errors import GateFailed

    s = tiny_settings("cognate.enabled=false", "compression.enabled=true", "compression.calibration_tokens=0",
                      rules({"pattern": "*_proj.weight", "codec": "rtn", "params": {"bits": 2, "group": 64}}, KEEP),
                      "compression.gates={perplexity: 0.0001}")
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    with pytest.raises(GateFailed, match="perplexity"):
        run_stage_on("compression", [base], ctx)
    assert [k for k in ctx.store.list() if k.startswith("compression-")] == []


def test_export_decodes_the_artifact_into_a_plain_folder(tiny_settings, tmp_path):
    from flows.cli import main

    ctx, _, key, _ = compress(tiny_settings, rules(PROJ_VPTQ, EMBED_RTN, KEEP))
    out = tmp_path / "plain"
    assert main(["export", key, str(out), "--set", f"store.url={ctx.settings.store.url}"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / MANIFEST).exists()
    a, tok = load_model(str(out))
    b, _ = load_model(str(ctx.store.get(key)))
    ids = tok("Q: What is 2 + 2?\nA:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_finetuning_tunes_only_codebooks_and_norms_and_lowers_the_calibration_loss(tiny_settings):
    tune = ["compression.finetune.steps=24", "compression.finetune.lr=0.003", "compression.finetune.tokens=1024",
            "compression.calibration_len=64"]
    ctx, _, plain_key, _ = compress(tiny_settings, rules(PROJ_VPTQ, EMBED_RTN, KEEP), *tune)
    ctx2, _, key, info = compress(tiny_settings, rules(PROJ_VPTQ, EMBED_RTN, KEEP), *tune,
                                  "compression.finetune.enabled=true")
    ft = info["finetune"]
    assert ft["steps"] == 24 and ft["tensors"] == 14 and ft["kept"] == 5  # 4 layer norms + the final norm
    assert ft["loss_after"] < 0.8 * ft["loss_before"]  # measured with the codebooks as stored (float16)
    plain, tuned = (load_file(str(c.store.get(k) / PAYLOAD)) for c, k in ((ctx, plain_key), (ctx2, key)))
    assert plain.keys() == tuned.keys()
    changed = {n for n in plain if not torch.equal(plain[n], tuned[n])}
    codebooks = {n for n in plain if "::codebook" in n}
    norms = {n for n in plain if n.endswith("norm.weight")}
    assert changed == codebooks | norms  # indices, permutations, the embedding's codes and scales: untouched
    assert all(tuned[n].dtype == torch.float16 for n in codebooks)
    sizes = [json.loads((c.store.get(k) / MANIFEST).read_text())["totals"]["bits"] for c, k in ((ctx, plain_key), (ctx2, key))]
    assert sizes[0] == sizes[1]
